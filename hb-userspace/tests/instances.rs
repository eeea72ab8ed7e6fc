//! Instances: one collector per interface in a network namespace, whatever
//! the PID and mount namespaces around it.
//!
//! - Two namespaces with an interface of the same name, each collector the
//!   PID 1 of its own PID namespace (as in two containers sharing the
//!   host's bpffs), never touch each other.
//! - Pins of an hb from before instance names are adopted only by the
//!   collector whose interface their link is attached to.
//! - `ip netns exec` and `--netns` work like the host's mount namespace;
//!   where pins can only live in a private mount, hb says so and never
//!   claims the program stays attached.
//! - One collector per instance, decided by a lock: simultaneous starts,
//!   zombies and recycled pids; a failed start removes only what it made.
//! - `hb status` exit codes and messages, `hb detach` refusals.
//!
//! Every wait is bounded; namespaces, processes and pins go on drop, so
//! also when a test fails.

use std::{
    fs,
    net::UdpSocket,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    control::Log,
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: &str = "1500ms";
const SWEEP: &str = "200ms";
const COLLECTOR: &str = "198.18.9.1";
const HOST: &str = "198.18.9.2";

/// Paths removed on drop (directories with what they hold): pins that are
/// not named after a test namespace.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
    }
}

/// A veth pair between namespaces `hbt-<pid>-<tag>a` and `…b`, the
/// collector's end named `a_if`, with the test addresses.
fn link(tag: &str, a_if: &str) -> Link {
    let a = Netns::for_test(&format!("{tag}a"));
    let b = Netns::for_test(&format!("{tag}b"));
    let link = Link::new(a, b, a_if, &format!("hb{tag}1"), None).unwrap();
    link.a
        .ip(&["addr", "add", &format!("{COLLECTOR}/24"), "dev", a_if])
        .unwrap();
    link.b
        .ip(&["addr", "add", &format!("{HOST}/24"), "dev", &link.b_if])
        .unwrap();
    link
}

/// An interface name shared by several namespaces, unique on the machine
/// (pins under the bare name are shared by every namespace).
fn shared_name(tag: &str) -> String {
    format!("hb{tag}{}", std::process::id())
}

fn beat(link: &Link) -> Proc {
    collector::beat(HB, link, HOST, COLLECTOR, "100ms")
}

/// `hb run` arguments for `iface` with the test's timings.
fn run_args(iface: &str) -> Vec<String> {
    [
        "run",
        "--iface",
        iface,
        "--timeout",
        TIMEOUT,
        "--sweep",
        SWEEP,
        "--summary-every",
        SWEEP,
        "--format",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts `cmd` (which runs `hb run … --format json`) as a collector, its
/// stderr in `log`.
fn spawn(mut cmd: Command, log: &Log) -> Collector {
    cmd.stdout(Stdio::piped()).stderr(log.stdio());
    Collector::spawn(cmd)
}

/// `hb run` on `link.a_if` in `link.a`, as the test kit starts it (only the
/// network namespace entered).
fn start(link: &Link, log: &Log) -> Collector {
    let mut cmd = link.a.command(HB).unwrap();
    cmd.args(run_args(&link.a_if));
    spawn(cmd, log)
}

/// Waits for the collector's first summary: it is running.
fn wait_summary(c: &Collector, log: &Log) -> Vec<serde_json::Value> {
    let (first, mut seen) = c.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    let first = first.unwrap_or_else(|| panic!("no summary; stderr:\n{}", log.read()));
    seen.push(first.1);
    seen
}

/// Waits for a `new` event for `host`, unless it is among `before` (lines
/// already read).
fn wait_new(c: &Collector, before: &[serde_json::Value], host: &str, log: &Log) {
    if before.iter().any(|v| is_event(v, "new", host)) {
        return;
    }
    let (new, seen) = c.wait_for(Duration::from_secs(6), |v| is_event(v, "new", host));
    assert!(
        new.is_some(),
        "no `new` for {host}: {:?}\nstderr:\n{}",
        host_events(&seen),
        log.read()
    );
}

/// Events about hosts (not summaries) among `lines`.
fn host_events(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["event"] != "summary")
        .map(|v| format!("{} {}", v["event"], v["host"]))
        .collect()
}

/// Exit code, stdout and stderr of `cmd`, killed after 20 s.
fn output(mut cmd: Command) -> (Option<i32>, String, String) {
    let tag = format!("out-{:?}", Instant::now());
    let (out, err) = (Log::new(&format!("{tag}-1")), Log::new(&format!("{tag}-2")));
    cmd.stdout(out.stdio()).stderr(err.stdio());
    let mut proc = Proc::spawn(cmd);
    let code = wait_exit(&mut proc, Duration::from_secs(20));
    (code, out.read(), err.read())
}

/// `hb ARGS` in `ns` (network namespace only).
fn hb(ns: &Netns, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = ns.command(HB).unwrap();
    cmd.args(args);
    output(cmd)
}

/// `ip netns exec NS hb ARGS`: a fresh /sys, hence no bpffs, in a mount
/// namespace of its own.
fn ip_netns_exec(ns: &Netns, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, HB]).args(args);
    cmd
}

/// Waits up to `within` for `proc` to exit; its exit code. Panics (the
/// process is then killed on drop) if it does not.
fn wait_exit(proc: &mut Proc, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {within:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process of this test.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The `hb` process among the descendants of `root` (e.g. under `unshare`
/// and `sh`), waited for up to 10 s.
fn hb_under(root: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut todo = vec![root];
        let mut seen = 0;
        while let Some(pid) = todo.pop() {
            seen += 1;
            if seen > 64 {
                break;
            }
            if pid != root
                && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "hb")
            {
                return pid;
            }
            let kids =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            todo.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
        assert!(Instant::now() < deadline, "no hb under pid {root}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a heartbeat sent to the collector reaches a socket there, i.e.
/// whether no program filters the interface.
fn heartbeat_reaches_socket(link: &Link) -> bool {
    let rx = link
        .a
        .within(|| UdpSocket::bind((COLLECTOR, 43278)).expect("binding the heartbeat port"))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = link
        .b
        .within(|| UdpSocket::bind((HOST, 0)).unwrap())
        .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        tx.send_to(b"PyHB", (COLLECTOR, 43278)).unwrap();
        if rx.recv(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// The collector's pin directory and state file, named from inside `ns`.
fn names(ns: &Netns, iface: &str) -> (PathBuf, PathBuf) {
    let iface = iface.to_owned();
    ns.within(move || {
        (
            hb_userspace::xdp::pin_dir(&iface),
            hb_userspace::xdp::state_file(&iface),
        )
    })
    .unwrap()
}

/// `hb run` in `ns` as the PID 1 of a new PID namespace, with its own
/// /proc: as in a container, /proc/1 shares the collector's network
/// namespace.
fn start_as_pid1(link: &Link, log: &Log) -> Collector {
    let mut cmd = link.a.command("unshare").unwrap();
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", HB])
        .args(run_args(&link.a_if));
    spawn(cmd, log)
}

/// Item 1: the instance is the interface in its network namespace, never
/// named after which namespace PID 1 is in.
#[test]
fn same_interface_name_in_two_containers_never_touch_each_other() {
    let name = shared_name("c");
    let _bare = RemoveOnDrop(vec![
        PathBuf::from("/sys/fs/bpf/hb").join(&name),
        PathBuf::from(format!("/run/hb/{name}.json")),
    ]);
    let one = link("c1", &name);
    let two = link("c2", &name);
    let (log1, log2) = (Log::new("c1"), Log::new("c2"));
    let mut c1 = start_as_pid1(&one, &log1);
    let seen = wait_summary(&c1, &log1);
    let _b1 = beat(&one);
    wait_new(&c1, &seen, HOST, &log1);

    let mut c2 = start_as_pid1(&two, &log2);
    let seen = wait_summary(&c2, &log2);
    let _b2 = beat(&two);
    // Each collector hears its own interface.
    wait_new(&c2, &seen, HOST, &log2);
    assert!(!log2.read().contains("took over"), "{}", log2.read());
    assert_ne!(names(&one.a, &name).0, names(&two.a, &name).0);

    // Stopping the second one detaches only its own program.
    let hb2 = hb_under(c2.proc.child.id());
    signal(hb2, libc::SIGTERM);
    assert_eq!(wait_exit(&mut c2.proc, Duration::from_secs(10)), Some(0));
    assert!(
        heartbeat_reaches_socket(&two),
        "second program still attached"
    );
    assert!(!heartbeat_reaches_socket(&one), "first program detached");
    let lines = c1.collect(Duration::from_millis(2000));
    assert!(
        !lines.iter().any(|v| v["event"] == "silent"),
        "the first collector lost its host: {lines:?}"
    );
    let hb1 = hb_under(c1.proc.child.id());
    signal(hb1, libc::SIGTERM);
    assert_eq!(wait_exit(&mut c1.proc, Duration::from_secs(10)), Some(0));
    assert!(!names(&one.a, &name).0.exists());
}

/// Item 1, upgrade: pins an earlier hb left under the bare interface name
/// are adopted by the collector whose interface their link is attached
/// to, and left alone by a collector on another interface of that name.
#[test]
fn pins_of_an_earlier_hb_are_adopted_only_where_attached() {
    let name = shared_name("m");
    let legacy = PathBuf::from("/sys/fs/bpf/hb").join(&name);
    let legacy_state = PathBuf::from(format!("/run/hb/{name}.json"));
    let _bare = RemoveOnDrop(vec![legacy.clone(), legacy_state.clone()]);
    let one = link("m1", &name);
    let two = link("m2", &name);
    let (log1, log2) = (Log::new("m1"), Log::new("m2"));

    // What an earlier hb leaves after SIGUSR2: the same files under the
    // bare name (its state file had no netns cookie).
    let mut c = start(&one, &log1);
    let seen = wait_summary(&c, &log1);
    let _b1 = beat(&one);
    wait_new(&c, &seen, HOST, &log1);
    signal(c.proc.child.id(), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut c.proc, Duration::from_secs(10)), Some(0));
    let (dir, state) = names(&one.a, &name);
    fs::rename(&dir, &legacy).unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    st.as_object_mut().unwrap().remove("netns_cookie");
    fs::write(&legacy_state, st.to_string()).unwrap();
    let _ = fs::remove_file(&state);
    let _ = fs::remove_file(state.with_extension("lock"));
    assert!(!heartbeat_reaches_socket(&one), "program not left attached");

    // The same interface name in another namespace: left alone.
    let mut c2 = start(&two, &log2);
    let seen = wait_summary(&c2, &log2);
    let _b2 = beat(&two);
    wait_new(&c2, &seen, HOST, &log2);
    assert!(legacy.join("link").exists(), "{}", log2.read());
    assert_eq!(c2.proc.terminate(), Some(0));
    assert!(
        !heartbeat_reaches_socket(&one),
        "the earlier program was detached"
    );

    // Its own interface: adopted, nothing reported new again.
    let log3 = Log::new("m3");
    let mut c3 = start(&one, &log3);
    let mut lines = wait_summary(&c3, &log3);
    lines.extend(c3.collect(Duration::from_millis(1500)));
    assert_eq!(host_events(&lines), Vec::<String>::new(), "{}", log3.read());
    assert!(log3.read().contains("adopted"), "{}", log3.read());
    assert!(log2.read().contains("left alone"), "{}", log2.read());
    assert!(!legacy.exists() && !legacy_state.exists());
    assert_eq!(c3.proc.terminate(), Some(0));
    assert!(!dir.exists(), "pins left behind");
    assert!(heartbeat_reaches_socket(&one));
}

/// Item 2: `hb run`, `hb status` and `hb detach` under `ip netns exec` (a
/// fresh /sys each) use the host's bpffs: restarts carry on; `--netns`
/// does the same from the host's namespace.
#[test]
fn ip_netns_exec_and_netns_behave_as_in_the_hosts_mount_namespace() {
    let link = link("ipx", "hbipx0");
    let ns = &link.a;
    let iface = link.a_if.as_str();
    let log = Log::new("ipx1");
    let run = run_args(iface);
    let run: Vec<_> = run.iter().map(String::as_str).collect();
    let mut c = spawn(ip_netns_exec(ns, &run), &log);
    let seen = wait_summary(&c, &log);
    let _b = beat(&link);
    wait_new(&c, &seen, HOST, &log);

    let (code, out, err) = output(ip_netns_exec(
        ns,
        &["status", "--iface", iface, "--format", "json"],
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"collector_running\":true"), "{out}");
    let (code, _, err) = output(ip_netns_exec(ns, &["detach", "--iface", iface]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is watching"), "{err}");

    // SIGUSR2: the program stays, as the log line says.
    signal(c.proc.child.id(), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut c.proc, Duration::from_secs(10)), Some(0));
    assert!(log.read().contains("stays attached"), "{}", log.read());
    assert!(
        !heartbeat_reaches_socket(&link),
        "program gone after SIGUSR2"
    );
    let (code, _, err) = output(ip_netns_exec(ns, &["status", "--iface", iface]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("still attached and recording"), "{err}");

    // The restart carries on: no host is new again.
    let log2 = Log::new("ipx2");
    let mut c = spawn(ip_netns_exec(ns, &run), &log2);
    let mut lines = wait_summary(&c, &log2);
    lines.extend(c.collect(Duration::from_millis(1500)));
    assert_eq!(host_events(&lines), Vec::<String>::new(), "{}", log2.read());
    assert!(log2.read().contains("took over"), "{}", log2.read());

    // SIGKILL: the program stays; --netns sees it from the host.
    c.proc.child.kill().unwrap();
    c.proc.child.wait().unwrap();
    assert!(
        !heartbeat_reaches_socket(&link),
        "program gone after SIGKILL"
    );
    let mut cmd = Command::new(HB);
    cmd.args(["status", "--netns", &ns.name, "--iface", iface]);
    let (code, out, err) = output(cmd);
    assert_eq!(code, Some(3), "{err}");
    assert!(out.contains("hosts=1"), "{out}");
    let mut cmd = Command::new(HB);
    cmd.args(["--netns", &ns.name, "detach", "--iface", iface]);
    let (code, out, err) = output(cmd);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("detached hb from"), "{out}");
    assert!(
        heartbeat_reaches_socket(&link),
        "program attached after detach"
    );

    // `hb run --netns` from the host's namespace.
    let log3 = Log::new("ipx3");
    let mut cmd = Command::new(HB);
    cmd.args(run_args(iface)).args(["--netns", &ns.name]);
    let mut c = spawn(cmd, &log3);
    let seen = wait_summary(&c, &log3);
    wait_new(&c, &seen, HOST, &log3);
    assert_eq!(c.proc.terminate(), Some(0));
    let (code, _, err) = output(ip_netns_exec(ns, &["status", "--iface", iface]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nothing of hb is attached"), "{err}");
    assert!(!names(ns, iface).0.exists());
}

/// Item 2: where pins can only live in a bpffs private to hb's mount
/// namespace, hb says so at start, and no line claims the program stays.
#[test]
fn a_private_bpffs_is_said_and_never_claimed_to_outlive_hb() {
    let link = link("prv", "hbprv0");
    let log = Log::new("prv");
    // PID 1 (sh) has no bpffs either: there is no host's to reach.
    let script = format!(
        "umount -l /sys/fs/bpf 2>/dev/null; ip netns exec {} {HB} {}; exit 0",
        link.a.name,
        run_args(&link.a_if).join(" ")
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ]);
    let mut c = spawn(cmd, &log);
    let seen = wait_summary(&c, &log);
    let _b = beat(&link);
    wait_new(&c, &seen, HOST, &log);
    let text = log.read();
    let warnings: Vec<_> = text
        .lines()
        .filter(|l| l.contains("restarts will not be gap-free"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("--netns"), "{text}");

    signal(hb_under(c.proc.child.id()), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut c.proc, Duration::from_secs(10)), Some(0));
    let text = log.read();
    assert!(!text.contains("stays attached"), "{text}");
    assert!(text.contains("SIGUSR2"), "{text}");
    assert!(heartbeat_reaches_socket(&link), "{text}");
}

/// Item 3: of simultaneous starts exactly one runs; the others exit 1 with
/// one line, and take nothing of the winner's with them.
#[test]
fn simultaneous_starts_one_runs_the_others_say_why() {
    let link = link("sim", "hbsim0");
    let _b = beat(&link);
    for round in 0..3 {
        let logs: Vec<_> = (0..4)
            .map(|i| Log::new(&format!("sim{round}{i}")))
            .collect();
        let mut all: Vec<_> = logs.iter().map(|log| start(&link, log)).collect();
        // The losers exit at once; give them 15 s on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = Vec::new();
        while exited.len() < 3 && Instant::now() < deadline {
            for (i, c) in all.iter_mut().enumerate() {
                if !exited.iter().any(|(j, _)| *j == i)
                    && let Some(status) = c.proc.child.try_wait().unwrap()
                {
                    exited.push((i, status.code()));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        let texts: Vec<_> = logs.iter().map(Log::read).collect();
        assert_eq!(exited.len(), 3, "round {round}: {exited:?}\n{texts:#?}");
        for (i, code) in &exited {
            assert_eq!(*code, Some(1), "{}", texts[*i]);
            let lines: Vec<_> = texts[*i].lines().collect();
            assert_eq!(lines.len(), 1, "{}", texts[*i]);
            assert!(
                lines[0].starts_with("error: another hb run")
                    && lines[0].contains("already watching"),
                "{}",
                texts[*i]
            );
        }
        let winner = (0..4)
            .find(|i| !exited.iter().any(|(j, _)| j == i))
            .unwrap();
        let mut c = all.swap_remove(winner);
        let lines = wait_summary(&c, &logs[winner]);
        if round == 0 {
            wait_new(&c, &lines, HOST, &logs[winner]);
        }
        // The winner's program is attached and its pins are whole.
        assert!(!heartbeat_reaches_socket(&link), "round {round}");
        let (dir, state) = names(&link.a, &link.a_if);
        assert!(dir.join("link").exists() && state.exists(), "round {round}");
        // SIGUSR2: the next round's winner carries on.
        signal(c.proc.child.id(), libc::SIGUSR2);
        assert_eq!(wait_exit(&mut c.proc, Duration::from_secs(10)), Some(0));
    }
    let (code, _, err) = hb(&link.a, &["detach", "--iface", &link.a_if]);
    assert_eq!(code, Some(0), "{err}");
}

/// Item 3: running is judged by the lock: an exited but unreaped
/// collector, or a state file naming a live unrelated process, blocks
/// nothing.
#[test]
fn zombies_and_recycled_pids_never_count_as_running() {
    let link = link("zmb", "hbzmb0");
    let iface = link.a_if.as_str();
    let _b = beat(&link);
    let log = Log::new("zmb1");
    let mut c = start(&link, &log);
    let seen = wait_summary(&c, &log);
    wait_new(&c, &seen, HOST, &log);
    // Two more summaries: the write holding the `new` has completed, so the
    // host is recorded as reported (one reported just before a kill is
    // reported again: at least once).
    for _ in 0..2 {
        let (s, _) = c.wait_for(Duration::from_secs(5), |v| v["event"] == "summary");
        assert!(s.is_some(), "no summary; stderr:\n{}", log.read());
    }
    // Killed, not reaped: a zombie.
    let pid = c.proc.child.id();
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .contains(") Z")
    {
        assert!(Instant::now() < deadline, "pid {pid} not a zombie");
        thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) = hb(&link.a, &["status", "--iface", iface]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is not running"), "{err}");
    let log2 = Log::new("zmb2");
    let mut c2 = start(&link, &log2);
    let mut lines = wait_summary(&c2, &log2);
    lines.extend(c2.collect(Duration::from_millis(1000)));
    assert_eq!(host_events(&lines), Vec::<String>::new());
    c.proc.child.wait().unwrap();
    c2.proc.child.kill().unwrap();
    c2.proc.child.wait().unwrap();

    // A state file naming a live process that is not hb (a recycled pid).
    let mut other = Proc::spawn({
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        cmd
    });
    let (_, state) = names(&link.a, iface);
    let recycle = || {
        let mut st: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
        st["pid"] = other.child.id().into();
        fs::write(&state, st.to_string()).unwrap();
    };
    recycle();
    let (code, _, err) = hb(&link.a, &["status", "--iface", iface]);
    assert_eq!(code, Some(3), "{err}");
    let log3 = Log::new("zmb3");
    let mut c3 = start(&link, &log3);
    wait_summary(&c3, &log3);
    c3.proc.child.kill().unwrap();
    c3.proc.child.wait().unwrap();
    recycle();
    let (code, out, err) = hb(&link.a, &["detach", "--iface", iface]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("detached hb from"), "{out}");
    assert!(heartbeat_reaches_socket(&link));
    let _ = other.child.kill();
}

/// Item 3: a start that fails after taking over the link of a stopped
/// collector leaves that link (and the program on it) in place.
#[test]
fn a_failed_start_removes_only_what_it_created() {
    let link = link("fst", "hbfst0");
    let iface = link.a_if.as_str();
    let _b = beat(&link);
    let log = Log::new("fst1");
    let mut c = start(&link, &log);
    let seen = wait_summary(&c, &log);
    wait_new(&c, &seen, HOST, &log);
    signal(c.proc.child.id(), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut c.proc, Duration::from_secs(10)), Some(0));
    // As after an upgrade from another map layout: the link stays, the
    // maps are new.
    let (dir, state) = names(&link.a, iface);
    fs::rename(dir.join("layout-6"), dir.join("layout-3")).unwrap();

    // Fails after attaching: its state file cannot be written (a
    // directory stands in its place; options and the metrics address are
    // all checked before anything is attached).
    let _ = fs::remove_file(&state);
    fs::create_dir(&state).unwrap();
    let (code, _, err) = hb(&link.a, &["run", "--iface", iface]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("took over"), "{err}");
    assert!(dir.join("link").exists(), "link removed: {err}");
    assert!(!heartbeat_reaches_socket(&link), "program detached: {err}");

    // A fresh start on a fresh interface that fails removes all it made.
    fs::remove_dir(&state).unwrap();
    let (code, _, err) = hb(&link.a, &["detach", "--iface", iface]);
    assert_eq!(code, Some(0), "{err}");
    fs::create_dir(&state).unwrap();
    let (code, _, err) = hb(&link.a, &["run", "--iface", iface]);
    let _ = fs::remove_dir(&state);
    assert_eq!(code, Some(1), "{err}");
    assert!(!dir.exists(), "{dir:?} left behind: {err}");
    assert!(heartbeat_reaches_socket(&link), "{err}");
}

/// Item 8: `hb status` exits 0 while the collector runs and 3 when it does
/// not, saying which case; unknown interfaces and missing privileges are
/// named; errors start with `error:` as clap's do.
#[test]
fn status_exit_codes_and_error_lines() {
    let link = link("sts", "hbsts0");
    let iface = link.a_if.as_str();
    let ns = &link.a;

    let (code, _, err) = hb(ns, &["status", "--iface", "nope"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "error: unknown interface `nope`: pick one from `ip link` (in this network namespace)"
    );
    let (code, out, err) = hb(ns, &["status", "--iface", iface, "--format", "json"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nothing of hb is attached"), "{err}");
    assert!(out.contains("\"program_attached\":false"), "{out}");

    let log = Log::new("sts");
    let _b = beat(&link);
    let mut c = start(&link, &log);
    let seen = wait_summary(&c, &log);
    wait_new(&c, &seen, HOST, &log);
    let (code, out, err) = hb(ns, &["status", "--iface", iface]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("hosts=1"), "{out}");
    c.proc.child.kill().unwrap();
    c.proc.child.wait().unwrap();
    let (code, out, err) = hb(ns, &["status", "--iface", iface, "--format", "json"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("still attached and recording"), "{err}");
    assert!(out.contains("\"collector_running\":false"), "{out}");
    assert!(out.contains("\"program_attached\":true"), "{out}");

    // Without privileges: one line, the fix, nothing else.
    let nobody = |args: &[&str]| {
        let mut cmd = ns.command("setpriv").unwrap();
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", HB])
            .args(args);
        output(cmd)
    };
    for args in [
        &["status", "--iface", iface][..],
        &["detach", "--iface", iface],
        &["run", "--iface", iface, "--ingest", "xdp"],
    ] {
        let (code, _, err) = nobody(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ")
                && err
                    .trim()
                    .ends_with("needs root: run it as root or with CAP_BPF and CAP_NET_ADMIN"),
            "{args:?}: {err}"
        );
    }
    // clap's errors and hb's share the prefix.
    let (code, _, err) = hb(ns, &["status"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("error: "), "{err}");

    // Detach refuses a live collector, unless forced.
    let log2 = Log::new("sts2");
    let mut c = start(&link, &log2);
    wait_summary(&c, &log2);
    let (code, _, err) = hb(ns, &["detach", "--iface", iface]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error: hb run (pid "), "{err}");
    let (code, out, err) = hb(ns, &["detach", "--iface", iface, "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("detached hb from"), "{out}");
    assert!(heartbeat_reaches_socket(&link));
    assert_eq!(c.proc.terminate(), Some(0));
    let (code, _, err) = hb(ns, &["status", "--iface", iface]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nothing of hb is attached"), "{err}");
}
