//! Test hosts on this machine: network namespaces joined by veth pairs, with
//! addresses that exist only inside them. A namespace is deleted on drop,
//! so also when a test fails (panics unwind through the guards), and
//! [`cleanup_all`] deletes every one still alive, for a signal handler's
//! last resort.
//!
//! Everything here returns errors; the `for_test` constructors panic.

use std::{
    ffi::OsStr,
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    sync::Mutex,
    thread,
};

use anyhow::{Context as _, Result, bail};

/// Namespaces this process has created and not yet deleted.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The list of live namespaces (a panic elsewhere while holding it does not
/// stop the cleanup).
fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Longest interface name Linux takes (IFNAMSIZ, less the NUL).
const IFNAME_MAX: usize = 15;

/// Runs `ip` (iproute2) with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up. A leftover of a killed
    /// run with the same name is replaced.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        delete(&name);
        ip(&["netns", "add", &name])?;
        live().push(name.clone());
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// For tests: `hbt-<pid>-<tag>`, unique per process and tag.
    #[track_caller]
    pub fn for_test(tag: &str) -> Self {
        let name = format!("hbt-{}-{tag}", std::process::id());
        Self::new(name).unwrap_or_else(|e| panic!("creating a namespace: {e:#}"))
    }

    /// The namespace's file, as `setns` takes it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <this namespace> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace. Only the network
    /// namespace changes (unlike `ip netns exec`, which also remounts /sys),
    /// so the program sees the machine's bpffs like a real collector.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let path = self.path();
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        let mut cmd = Command::new(program);
        // SAFETY: only setns (an async-signal-safe system call) between
        // fork and exec; the fd is moved into the closure and stays open as
        // long as the command.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// The namespace's inode number (what `/proc/<pid>/ns/net` of a process
    /// inside shows), which names a collector's pins and state file outside
    /// the host's namespace (`<iface>@netns-<inode>`).
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.path();
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("reading {path}"))?
            .ino())
    }

    /// The id of the XDP program attached to `iface` in this namespace, as
    /// `ip -j link show` reports it; `None` when nothing is attached.
    pub fn xdp_prog(&self, iface: &str) -> Result<Option<u64>> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "link", "show", "dev", iface])
            .output()
            .context("running ip (iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip link show {iface}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `ip -j link show`")?;
        let [link] = links.as_array().map(Vec::as_slice).unwrap_or_default() else {
            bail!("`ip -j link show dev {iface}` shows not one link: {links}");
        };
        match link.get("xdp") {
            None => Ok(None),
            Some(xdp) => xdp["prog"]["id"]
                .as_u64()
                .map(Some)
                .with_context(|| format!("no program id in {xdp}")),
        }
    }

    /// Runs `f` on a thread that has joined this namespace, and waits for
    /// it: sockets it creates live in the namespace and can be used from
    /// any thread.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        within(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
        live().retain(|n| *n != self.name);
    }
}

/// Runs `f` on a thread that has joined the namespace at `path` (sockets it
/// opens live there) and waits for it.
pub fn within<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = path.to_string();
    thread::Builder::new()
        .name("in-netns".into())
        .spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .context("starting a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in a namespace panicked"))?
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &str) -> Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Deletes namespace `name`, and what collectors in it left on purpose
/// (their program stays attached when killed): pins, state and lock files
/// named `…@netns-<inode>` after the namespace, which would otherwise
/// outlive it. Never fails: this runs on every exit path.
fn delete(name: &str) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(meta) = std::fs::metadata(format!("/run/netns/{name}")) {
        let suffix = format!("@netns-{}", meta.ino());
        for dir in ["/sys/fs/bpf/hb", "/run/hb"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                // `<iface>@netns-<inode>`, then nothing, `.json` or `.lock`.
                let instance = file
                    .trim_end_matches(".tmp")
                    .trim_end_matches(".json")
                    .trim_end_matches(".lock");
                if instance.ends_with(&suffix) {
                    let path = entry.path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Deletes every namespace this process created that is still alive: the
/// last resort of a signal handler when the normal unwinding does not
/// finish in time. Does nothing if the list is being changed right now.
pub fn cleanup_all() {
    let names = match LIVE.try_lock() {
        Ok(live) => live.clone(),
        Err(_) => return,
    };
    for name in names {
        delete(&name);
    }
}

/// Two namespaces joined by a veth pair: `a`'s end is `a_if`, `b`'s is
/// `b_if`. Dropped in field order: `a` goes first, taking the pair with it.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl Link {
    /// Joins `a` and `b` with a veth pair, `a_if` in `a` and `b_if` in `b`,
    /// both ends up. `macs`: the ends' addresses (`a_if`'s, `b_if`'s), or
    /// the kernel's random ones.
    pub fn new(
        a: Netns,
        b: Netns,
        a_if: &str,
        b_if: &str,
        macs: Option<[[u8; 6]; 2]>,
    ) -> Result<Self> {
        for name in [a_if, b_if] {
            if name.is_empty() || name.len() > IFNAME_MAX {
                bail!("interface name {name:?} must be 1-{IFNAME_MAX} bytes");
            }
        }
        let (a_mac, b_mac) = match macs {
            Some([a, b]) => (Some(mac(a)), Some(mac(b))),
            None => (None, None),
        };
        let mut args = vec!["link", "add", a_if, "netns", &a.name];
        if let Some(m) = &a_mac {
            args.extend(["address", m]);
        }
        args.extend(["type", "veth", "peer", "name", b_if, "netns", &b.name]);
        if let Some(m) = &b_mac {
            args.extend(["address", m]);
        }
        ip(&args)?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])?;
        Ok(Self {
            a,
            b,
            a_if: a_if.to_string(),
            b_if: b_if.to_string(),
        })
    }

    /// For tests: namespaces `hbt-<pid>-<tag>a` and `…b`, interfaces
    /// `hb<tag>0` and `hb<tag>1` (unique per test: pins and state files are
    /// named after the interface).
    #[track_caller]
    pub fn for_test(tag: &str) -> Self {
        // Interface names are limited to 15 bytes.
        assert!(tag.len() <= 10, "tag too long for an interface name");
        let a = Netns::for_test(&format!("{tag}a"));
        let b = Netns::for_test(&format!("{tag}b"));
        Self::new(a, b, &format!("hb{tag}0"), &format!("hb{tag}1"), None)
            .unwrap_or_else(|e| panic!("creating a veth pair: {e:#}"))
    }

    /// As `for_test`, with IPv4 addresses in the /24 `net` (e.g.
    /// `"198.18.30"`): `net.1` on `a`'s end (the collector), `net.N` on
    /// `b`'s end for each N of `clients`.
    pub fn for_test_on(tag: &str, net: &str, clients: &[u8]) -> Self {
        let link = Self::for_test(tag);
        link.address(net, clients);
        link
    }

    /// Adds `net.1/24` on `a`'s end and `net.N/24` on `b`'s for each N of
    /// `clients` (panics on failure: for tests).
    pub fn address(&self, net: &str, clients: &[u8]) {
        let add = |ns: &Netns, iface: &str, host: u8| {
            ns.ip(&["addr", "add", &format!("{net}.{host}/24"), "dev", iface])
                .unwrap_or_else(|e| panic!("adding {net}.{host}: {e:#}"))
        };
        add(&self.a, &self.a_if, 1);
        for &host in clients {
            add(&self.b, &self.b_if, host);
        }
    }
}

/// A MAC address as `ip` takes it.
fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}
