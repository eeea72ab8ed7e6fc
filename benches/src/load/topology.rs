//! The test network: a collector namespace and a generator namespace joined
//! by a veth pair. Addresses exist only inside them. Everything is removed
//! when the [`Topology`] is dropped, and by [`cleanup_all`] from the signal
//! handler's last resort.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    sync::Mutex,
    thread,
};

use anyhow::{Context as _, Result, bail};

use super::frames::{COLLECTOR_MAC, GENERATOR_MAC};

/// Namespaces that exist right now, for [`cleanup_all`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `ip` with `args`; an error carries its stderr.
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
    pub fn new(name: String) -> Result<Self> {
        // A leftover of a killed run with the same name is replaced.
        delete(&name);
        ip(&["netns", "add", &name])?;
        LIVE.lock().unwrap().push(name.clone());
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs in this namespace. Only the network namespace
    /// changes (unlike `ip netns exec`, which also remounts /sys), so the
    /// program sees the machine's bpffs like a real collector.
    pub fn command(&self, program: &std::path::Path) -> Result<Command> {
        let ns = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let mut cmd = Command::new(program);
        // SAFETY: only setns and prctl (async-signal-safe system calls)
        // between fork and exec; the fd is moved into the closure and lives
        // as long as the command.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Should the load test be killed outright (SIGKILL), the
                // collector still gets SIGTERM and detaches.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `f` on a thread in this namespace and waits for it.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        within(&self.path(), f)
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
/// (pins and state files named after the namespace, which would otherwise
/// outlive it). Never fails: this runs on every exit path.
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
                if file.trim_end_matches(".json").ends_with(&suffix) {
                    let path = entry.path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
        LIVE.lock().unwrap().retain(|n| *n != self.name);
    }
}

/// Deletes every namespace still alive: the last resort of a signal
/// handler when the normal unwinding does not finish in time.
pub fn cleanup_all() {
    let names = match LIVE.try_lock() {
        Ok(live) => live.clone(),
        Err(_) => return,
    };
    for name in names {
        delete(&name);
    }
}

/// The two namespaces and the veth pair between them.
///
/// Collector end `a_if`: 198.18.0.1/24, fd00:4842::1/64, MAC
/// [`COLLECTOR_MAC`], with routes to the simulated hosts' ranges (10.0.0.0/8,
/// fd00:4842:1::/64) through the veth so that reverse-path filtering accepts
/// them. Generator end `b_if`: 198.18.0.2/24, fd00:4842::2/64.
pub struct Topology {
    // Field order is drop order: the collector namespace goes first, taking
    // the veth pair with it.
    pub collector: Netns,
    pub generator: Netns,
    pub a_if: String,
    pub b_if: String,
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

impl Topology {
    /// `tag`: unique among topologies alive at once, at most 10 characters.
    pub fn new(tag: &str) -> Result<Self> {
        if tag.is_empty() || tag.len() > 10 {
            bail!("topology tag {tag:?} must be 1-10 characters (interface names)");
        }
        let collector = Netns::new(format!("hbload-{tag}-c"))?;
        let generator = Netns::new(format!("hbload-{tag}-g"))?;
        let (a_if, b_if) = (format!("hbl{tag}a"), format!("hbl{tag}b"));
        ip(&[
            "link",
            "add",
            &a_if,
            "netns",
            &collector.name,
            "address",
            &mac(COLLECTOR_MAC),
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            &generator.name,
            "address",
            &mac(GENERATOR_MAC),
        ])?;
        let c = &collector;
        c.ip(&["addr", "add", "198.18.0.1/24", "dev", &a_if])?;
        c.ip(&["addr", "add", "fd00:4842::1/64", "dev", &a_if, "nodad"])?;
        c.ip(&["link", "set", &a_if, "up"])?;
        c.ip(&["route", "add", "10.0.0.0/8", "dev", &a_if])?;
        c.ip(&["-6", "route", "add", "fd00:4842:1::/64", "dev", &a_if])?;
        let g = &generator;
        g.ip(&["addr", "add", "198.18.0.2/24", "dev", &b_if])?;
        g.ip(&["addr", "add", "fd00:4842::2/64", "dev", &b_if, "nodad"])?;
        g.ip(&["link", "set", &b_if, "up"])?;
        Ok(Self {
            collector,
            generator,
            a_if,
            b_if,
        })
    }
}
