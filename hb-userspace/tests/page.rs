//! The status page (`GET /`) in a real headless browser: Debian's
//! `chromium`, installed by `cargo xtask setup`/`test`, run inside the test
//! namespace against the real collector (real XDP program, heartbeats from
//! a client namespace over a veth pair). What the issue promises: the page
//! renders the counts, shows a host that went silent (named from the
//! inventory, its name rendered as text however it is spelled), the
//! missing hosts and recent events, pages its lists, and its script
//! refreshes it.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::{
        fd::{FromRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{Collector, Proc},
    netns::{Link, Netns},
};

const HB: &str = env!("CARGO_BIN_EXE_hb");

/// How long one browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hb-page-{}-{tag}", std::process::id()));
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

/// The DOM chromium builds of `url`, loaded in `ns` (`--dump-dom`: once
/// the page has loaded). Killed, with its children, after
/// `BROWSER_TIMEOUT`.
fn dom(ns: &Netns, url: &str) -> String {
    let profile = TempDir::new("profile-dump");
    let mut cmd = ns.command("chromium").expect("entering the namespace");
    cmd.args([
        "--headless",
        // Root, in a test: no user namespace sandbox to be had.
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()));
    cmd.args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills the renderers too.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .expect("running chromium (cargo xtask setup installs it)");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever it left behind in its group.
    // SAFETY: as above; the group is ours and the leader has exited.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let dom = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}): {}\n{dom}",
        errs.join().unwrap_or_default()
    );
    dom
}

/// A pipe, its ends above the standard descriptors and close-on-exec.
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let high = |fd: RawFd| {
        // SAFETY: duplicating a descriptor we own, then closing the original.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(h >= 10);
        unsafe { libc::close(fd) };
        h
    };
    (high(fds[0]), high(fds[1]))
}

/// A headless chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on its fd 3, replies on its fd 4,
/// each a JSON message ended by a NUL), to read a page's DOM at times the
/// test chooses, in real time. Killed with its children on drop.
struct Browser {
    child: std::process::Child,
    to: File,
    from: mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: String,
    _profile: TempDir,
}

impl Browser {
    fn open(ns: &Netns, url: &str) -> Self {
        let profile = TempDir::new("profile-cdp");
        let (cmd_r, cmd_w) = pipe();
        let (reply_r, reply_w) = pipe();
        let mut cmd = ns.command("chromium").expect("entering the namespace");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        // SAFETY: only dup2 (async-signal-safe) between fork and exec; dup2
        // leaves the new descriptors open across exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(cmd_r, 3) < 0 || libc::dup2(reply_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("running chromium (cargo xtask setup installs it)");
        // SAFETY: the parent's ends are ours alone; the child's are closed
        // here (the child has its copies).
        let (to, mut from) = unsafe {
            libc::close(cmd_r);
            libc::close(reply_w);
            (File::from_raw_fd(cmd_w), File::from_raw_fd(reply_r))
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice(&msg[..end])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut b = Self {
            child,
            to,
            from: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        // The page target the URL opened.
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let target = loop {
            let targets = b.call(None, "Target.getTargets", serde_json::json!({}));
            let page = targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .map(|t| t["targetId"].as_str().unwrap().to_owned());
            if let Some(t) = page {
                break t;
            }
            assert!(Instant::now() < deadline, "chromium opened no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = b.call(
            None,
            "Target.attachToTarget",
            serde_json::json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// A browser whose page runs no script, at `url`: what a reader without
    /// JavaScript sees.
    fn without_scripts(ns: &Netns, url: &str) -> Self {
        let mut b = Self::open(ns, "about:blank");
        let session = b.session.clone();
        b.call(
            Some(&session),
            "Emulation.setScriptExecutionDisabled",
            serde_json::json!({"value": true}),
        );
        b.call(
            Some(&session),
            "Page.navigate",
            serde_json::json!({"url": url}),
        );
        b
    }

    /// Sends a command (to the page's session if `session`) and waits for
    /// its result.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("writing to chromium");
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no reply from chromium to {method}: {e}"));
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The page's DOM now (empty while it has none).
    fn dom(&mut self) -> String {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            serde_json::json!({
                "expression": "document.documentElement ? document.documentElement.outerHTML : ''",
                "returnByValue": true,
            }),
        );
        r["result"]["value"].as_str().unwrap_or("").to_owned()
    }

    /// Polls the DOM until `ok` holds of it, for at most `within`; the last
    /// DOM read.
    fn wait_for(&mut self, within: Duration, ok: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + within;
        loop {
            let dom = self.dom();
            if ok(&dom) {
                return (true, dom);
            }
            if Instant::now() > deadline {
                return (false, dom);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The text of the element with `id`, if the DOM has it.
fn cell_of<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let s = &dom[at..];
    let s = &s[s.find('>')? + 1..];
    Some(&s[..s.find('<')?])
}

/// The part of `dom` from the element with `id` to the end of its section.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The text of the element with `id` (a table cell: no markup inside).
fn cell<'a>(dom: &'a str, id: &str) -> &'a str {
    let s = section(dom, id);
    let s = &s[s.find('>').unwrap() + 1..];
    &s[..s.find('<').unwrap()]
}

/// A plain GET (no browser): status and body.
fn get(ns: &Netns, port: u16, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\n\r\n");
    ns.within(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    })
    .unwrap()
}

fn beat(link: &Link, net: &str, host: u8) -> Proc {
    let mut cmd = link.b.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        &format!("{net}.1"),
        "--period",
        "100ms",
        "--bind",
        &format!("{net}.{host}"),
    ]);
    Proc::spawn(cmd)
}

#[test]
fn the_page_shows_the_fleet_and_a_host_gone_silent_in_a_browser() {
    let net = "198.18.70";
    let link = Link::for_test_on("page", net, &[2, 3, 4]);
    let dir = TempDir::new("inv");
    let csv = dir.0.join("hosts.csv");
    // .3's name is markup: it must show as text.
    std::fs::write(
        &csv,
        "address,name,group,dc\n\
         198.18.70.2,web-2,web,fra\n\
         198.18.70.3,<script>alert(1)</script>,db,\"<b>x</b>\"\n\
         198.18.70.9,gone-9,web,fra\n",
    )
    .unwrap();
    let port = 9770;
    let listen = format!("127.0.0.1:{port}");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            "--max-hosts",
            "4096",
            "--inventory",
            csv.to_str().unwrap(),
            "--grace",
            "2s",
            "--metrics-listen",
            &listen,
        ],
    );
    let url = format!("http://{listen}/");
    let _web = beat(&link, net, 2);
    let mut db = beat(&link, net, 3);
    let (missing, seen) = collector.wait_for(Duration::from_secs(8), |v| v["event"] == "missing");
    assert!(missing.is_some(), "no missing event: {seen:?}");

    // Both beat: nobody silent yet.
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let first = dom(&link.a, &url);
    assert_eq!(cell(&first, "hosts"), "2", "{first}");
    assert_eq!(cell(&first, "alive"), "2", "{first}");
    assert_eq!(cell(&first, "silent"), "0", "{first}");

    // .3 stops: silent, listed by its name from the inventory.
    db.terminate();
    let (silent, seen) = collector.wait_for(Duration::from_secs(5), |v| v["event"] == "silent");
    assert!(silent.is_some(), "no silent event: {seen:?}");
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    // Read without JavaScript: complete as served.
    let mut reader = Browser::without_scripts(&link.a, &url);
    let (loaded, page) = reader.wait_for(Duration::from_secs(30), |d| d.contains("</main>"));
    assert!(loaded, "the page did not load: {page}");
    drop(reader);
    assert_eq!(cell(&page, "hosts"), "2", "{page}");
    assert_eq!(cell(&page, "alive"), "1", "{page}");
    assert_eq!(cell(&page, "silent"), "1", "{page}");
    assert_eq!(cell(&page, "missing"), "1", "{page}");
    assert!(
        cell(&page, "table").starts_with("2 of 4096 slots"),
        "{page}"
    );
    let silent = section(&page, "silent-hosts");
    assert!(silent.contains("198.18.70.3"), "{silent}");
    // The name as text: the DOM holds it escaped, and no element was made
    // of it (the page's only script element is its own).
    assert!(
        silent.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{silent}"
    );
    assert!(silent.contains("dc=&lt;b&gt;x&lt;/b&gt;"), "{silent}");
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(!page.contains("<b>"), "{page}");
    let missing = section(&page, "missing-hosts");
    assert!(
        missing.contains("198.18.70.9") && missing.contains("gone-9"),
        "{missing}"
    );
    let groups = section(&page, "groups");
    assert!(
        groups.contains(">web<") && groups.contains(">db<"),
        "{groups}"
    );
    let recent = section(&page, "recent");
    assert!(
        recent.contains(">silent<") && recent.contains("&lt;script&gt;"),
        "{recent}"
    );
    assert!(
        recent.contains(">missing<") && recent.contains("gone-9"),
        "{recent}"
    );

    // Paging: the second page of one host is empty and links back.
    let (status, second) = get(&link.a, port, "/?offset=1&limit=1");
    assert_eq!(status, 200);
    let silent = section(&second, "silent-hosts");
    assert!(!silent.contains("198.18.70.3"), "{silent}");
    assert!(
        silent.contains("href=\"/?offset=0&amp;limit=1\""),
        "{silent}"
    );
    assert_eq!(get(&link.a, port, "/?limit=x").0, 400);
    // The other endpoints are as they were.
    let (status, json) = get(&link.a, port, "/silent");
    assert_eq!(status, 200);
    assert!(json.starts_with('{'), "{json}");

    // The script refreshes the page: a browser that loaded it while .3
    // was silent shows it recovered once it beats again, without a reload.
    let mut browser = Browser::open(&link.a, &url);
    let (loaded, dom) = browser.wait_for(Duration::from_secs(30), |d| {
        cell_of(d, "silent") == Some("1")
    });
    assert!(loaded, "the page did not load: {dom}");
    let _db = beat(&link, net, 3);
    let (recovered, seen) =
        collector.wait_for(Duration::from_secs(5), |v| v["event"] == "recovered");
    assert!(recovered.is_some(), "no recovered event: {seen:?}");
    // Refreshed every 5 s: two periods and some slack.
    let (refreshed, dom) = browser.wait_for(Duration::from_secs(15), |d| {
        cell_of(d, "silent") == Some("0")
    });
    assert!(refreshed, "the page was not refreshed: {dom}");
    assert!(dom.contains("data-refreshes=\""), "{dom}");
    assert_eq!(cell_of(&dom, "alive"), Some("2"), "{dom}");
    assert!(section(&dom, "recent").contains(">recovered<"), "{dom}");
}
