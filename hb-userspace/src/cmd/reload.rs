//! SIGHUP: the config file and the inventory read again, off the event
//! loop (a large inventory takes a second to load; the loop keeps
//! sweeping), and adopted at the next tick if they can be: settings that
//! need the program re-attached are refused, a bad file is reported, and
//! either way the running configuration stays.

use std::{
    sync::mpsc::{self, Receiver, TryRecvError},
    thread,
    time::Duration,
};

use log::{info, warn};

use crate::{
    config::{CommandLine, RunConfig},
    track::fleet::Fleet,
};

/// A configuration read again, to adopt.
pub struct Adopt {
    pub config: RunConfig,
    pub fleet: Fleet,
}

type Loaded = Result<(RunConfig, Fleet), String>;

pub struct Reloader {
    command_line: CommandLine,
    /// The configuration the collector runs with.
    running: RunConfig,
    loading: Option<Receiver<Loaded>>,
    /// A SIGHUP came while loading: load again once done (the file may
    /// have changed since the load began).
    again: bool,
}

impl Reloader {
    pub fn new(command_line: CommandLine, running: RunConfig) -> Self {
        Self {
            command_line,
            running,
            loading: None,
            again: false,
        }
    }

    /// What a reload reads: the config file, else the inventory.
    fn source(&self) -> Option<String> {
        match (&self.command_line.args.config, &self.running.args.inventory) {
            (Some(c), _) => Some(c.display().to_string()),
            (None, Some(i)) => Some(format!("inventory {}", i.display())),
            (None, None) => None,
        }
    }

    /// SIGHUP: starts reading the configuration again.
    pub fn hangup(&mut self) {
        let Some(source) = self.source() else {
            info!(
                "SIGHUP: nothing to reload (no --config, no --inventory); stop hb with SIGTERM (detach) or SIGUSR2 (restart)"
            );
            return;
        };
        if self.loading.is_some() {
            self.again = true;
            return;
        }
        info!("SIGHUP: reloading {source}");
        let command_line = self.command_line.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("hb-reload".into())
            .spawn(move || {
                let loaded = command_line
                    .resolve()
                    .map_err(|e| e.to_string())
                    .and_then(|config| {
                        let fleet = Fleet::load(&config.args.fleet_config())
                            .map_err(|e| format!("inventory: {e}"))?;
                        Ok((config, fleet))
                    });
                let _ = tx.send(loaded);
            });
        match spawned {
            Ok(_) => self.loading = Some(rx),
            Err(e) => warn!("reload: cannot start a thread to read {source}: {e}"),
        }
    }

    /// At a tick: the configuration read again, if it is in and can be
    /// adopted (it is then the running one).
    pub fn poll(&mut self) -> Option<Adopt> {
        let loaded = match self.loading.as_ref()?.try_recv() {
            Err(TryRecvError::Empty) => return None,
            Ok(loaded) => loaded,
            Err(TryRecvError::Disconnected) => Err("the reading thread died".into()),
        };
        self.loading = None;
        if std::mem::take(&mut self.again) {
            self.hangup();
        }
        let source = self.source().unwrap_or_default();
        let (config, fleet) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!("reload failed, keeping the running configuration: {e}");
                return None;
            }
        };
        let refused = fixed_changes(&self.running, &config);
        if !refused.is_empty() {
            warn!(
                "reload refused, keeping the running configuration: {} cannot change while hb runs (restart it: SIGUSR2, then start it with the new settings)",
                refused.join(", ")
            );
            return None;
        }
        let changes = changes(&self.running, &config);
        if changes.is_empty() {
            info!("reloaded {source}: no setting changed (inventory read again)");
        } else {
            info!("reloaded {source}: {}", changes.join(", "));
        }
        self.running = config.clone();
        Some(Adopt { config, fleet })
    }
}

/// The settings that differ and cannot change without re-attaching.
fn fixed_changes(old: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    let (a, b) = (&old.args, &new.args);
    let mut refused = Vec::new();
    macro_rules! fixed {
        ($($key:ident),*) => {$(
            if a.$key != b.$key {
                refused.push(stringify!($key));
            }
        )*};
    }
    fixed!(
        iface,
        port,
        ingest,
        listen,
        xdp_mode,
        max_hosts,
        max_bare_hosts,
        bpffs,
        key_file,
        require_auth,
        any_destination,
        pass_heartbeats,
        metrics_listen,
        sweep,
        format
    );
    if old.netns != new.netns {
        refused.push("netns");
    }
    refused
}

/// What the reload changes, one `key old -> new` each.
fn changes(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let (a, b) = (&old.args, &new.args);
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mut out = Vec::new();
    let mut change = |key: &str, was: String, is: String| {
        if was != is {
            out.push(format!("{key} {was} -> {is}"));
        }
    };
    change("timeout", d(a.timeout), d(b.timeout));
    change("summary_every", d(a.summary_every), d(b.summary_every));
    change(
        "metrics_silent_hosts",
        a.metrics_silent_hosts.to_string(),
        b.metrics_silent_hosts.to_string(),
    );
    let level = |c: &RunConfig| {
        c.log_level
            .map_or("default".into(), |l| format!("{l:?}").to_lowercase())
    };
    change("log_level", level(old), level(new));
    change(
        "log_format",
        format!("{:?}", old.log_format).to_lowercase(),
        format!("{:?}", new.log_format).to_lowercase(),
    );
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    };
    change("inventory", path(&a.inventory), path(&b.inventory));
    change("inventory.grace", d(a.grace), d(b.grace));
    change(
        "inventory.unknown_hosts",
        format!("{:?}", a.unknown_hosts).to_lowercase(),
        format!("{:?}", b.unknown_hosts).to_lowercase(),
    );
    change("forget_after", d(a.forget_after), d(b.forget_after));
    if a.groups != b.groups {
        let names =
            |c: &crate::cli::RunArgs| c.groups.keys().cloned().collect::<Vec<_>>().join(" ");
        out.push(format!("groups [{}] -> [{}]", names(a), names(b)));
    }
    out
}
