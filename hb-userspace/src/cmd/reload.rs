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

    /// A reload is being read (begun, not yet adopted or refused).
    pub fn busy(&self) -> bool {
        self.loading.is_some()
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
        let sweep = self.running.args.sweep;
        let (tx, rx) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("hb-reload".into())
            .spawn(move || {
                let loaded = command_line
                    .resolve_keeping_sweep(sweep)
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
            let inventory = if config.args.inventory.is_some() {
                " (inventory read again)"
            } else {
                ""
            };
            info!("reloaded {source}: no setting changed{inventory}");
        } else {
            info!("reloaded {source}: {}", changes.join(", "));
        }
        self.running = config.clone();
        Some(Adopt { config, fleet })
    }
}

/// Settings a reload cannot change: they need the program re-attached, or
/// the process restarted.
const FIXED: &[&str] = &[
    "iface",
    "port",
    "ingest",
    "listen",
    "xdp_mode",
    "max_hosts",
    "max_bare_hosts",
    "bpffs",
    "key_file",
    "require_auth",
    "any_destination",
    "pass_heartbeats",
    "metrics_listen",
    "sweep",
    "format",
    "netns",
    // The delivery thread is started with them.
    "alerting.alertmanager",
    "alerting.resend",
    // The --on-event thread is started with them.
    "on_event",
    "on_event_timeout",
];

/// Settings a reload changes, at the next sweep.
const RELOADABLE: &[&str] = &[
    "timeout",
    "min_timeout",
    "max_timeout",
    "flap_high",
    "flap_low",
    "summary_every",
    "metrics_silent_hosts",
    "log_level",
    "log_format",
    "inventory.file",
    "inventory.grace",
    "inventory.unknown_hosts",
    "forget_after",
    "groups",
];

/// Setting `key` (a config key) of `c`, as a reload's log line says it;
/// `None`: no such setting.
fn value(key: &str, c: &RunConfig) -> Option<String> {
    let a = &c.args;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let path = |p: &Option<std::path::PathBuf>| opt(p.as_ref().map(|p| p.display().to_string()));
    let name = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    Some(match key {
        "iface" => opt(a.iface.clone()),
        "port" => a.port.to_string(),
        "ingest" => name(&a.ingest),
        "listen" => a.listen.to_string(),
        "xdp_mode" => name(&a.xdp_mode),
        "max_hosts" => a.max_hosts.to_string(),
        "max_bare_hosts" => opt(a.max_bare_hosts.map(|n| n.to_string())),
        "bpffs" => path(&a.bpffs),
        "key_file" => path(&a.key_file),
        "require_auth" => a.require_auth.to_string(),
        "any_destination" => a.any_destination.to_string(),
        "pass_heartbeats" => a.pass_heartbeats.to_string(),
        "metrics_listen" => opt(a.metrics_listen.map(|m| m.to_string())),
        "sweep" => d(a.sweep),
        "format" => name(&a.format),
        "netns" => opt(c.netns.clone()),
        "alerting.alertmanager" => format!("{:?}", a.alertmanager),
        "alerting.resend" => d(a.alert_resend),
        "on_event" => opt(a.on_event.clone()),
        "on_event_timeout" => d(a.on_event_timeout),
        "timeout" => a.timeout.to_string(),
        "min_timeout" => d(a.min_timeout),
        "max_timeout" => d(a.max_timeout),
        "flap_high" => a.flap_high.to_string(),
        "flap_low" => a.flap_low.to_string(),
        "summary_every" => d(a.summary_every),
        "metrics_silent_hosts" => a.metrics_silent_hosts.to_string(),
        "log_level" => c.log_level.map_or("default".into(), |l| name(&l)),
        "log_format" => name(&c.log_format),
        "inventory.file" => path(&a.inventory),
        "inventory.grace" => d(a.grace),
        "inventory.unknown_hosts" => name(&a.unknown_hosts),
        "forget_after" => d(a.forget_after),
        "groups" => {
            let groups: Vec<String> = a
                .groups
                .iter()
                .map(|(n, g)| {
                    let t = g.timeout.map_or("-".into(), |t| t.to_string());
                    let gr = g.grace.map_or("-".into(), d);
                    format!("{n}(timeout {t}, grace {gr})")
                })
                .collect();
            format!("[{}]", groups.join(" "))
        }
        _ => return None,
    })
}

/// The keys of `keys` whose settings differ.
fn differ<'k>(keys: &[&'k str], old: &RunConfig, new: &RunConfig) -> Vec<&'k str> {
    keys.iter()
        .copied()
        .filter(|k| value(k, old) != value(k, new))
        .collect()
}

/// The settings that differ and cannot change without re-attaching.
fn fixed_changes(old: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    differ(FIXED, old, new)
}

/// What the reload changes, one `key old -> new` each.
fn changes(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    differ(RELOADABLE, old, new)
        .into_iter()
        .map(|k| {
            let v = |c| value(k, c).unwrap_or_default();
            format!("{k} {} -> {}", v(old), v(new))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        config::{CommandLine, key_of},
    };

    /// Every option of `hb run` is either reloadable or refused at a
    /// reload, and a reload sees it change: a new option cannot be
    /// forgotten here.
    #[test]
    fn every_option_is_reloadable_or_refused() {
        let mut cli = Cli::command();
        cli.build();
        let run = cli.find_subcommand("run").expect("hb run");
        let Command::Run(args) = Cli::try_parse_noting(["hb", "run"]).unwrap().command else {
            panic!("not run")
        };
        let config = CommandLine {
            args,
            log_level: None,
            log_format: None,
            netns: None,
        }
        .resolve()
        .unwrap();
        let mut walked = 0;
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version" | "config") {
                continue;
            }
            let key = key_of(long);
            let kinds = [FIXED, RELOADABLE]
                .iter()
                .filter(|l| l.contains(&key.as_str()))
                .count();
            assert_eq!(
                kinds, 1,
                "--{long} ({key}): in {kinds} of FIXED and RELOADABLE"
            );
            assert!(
                value(&key, &config).is_some(),
                "--{long}: no value for `{key}`"
            );
            walked += 1;
        }
        assert_eq!(
            walked,
            FIXED.len() + RELOADABLE.len() - 1,
            "(groups has no option)"
        );
    }

    #[test]
    fn a_reload_says_what_changes_and_what_it_refuses() {
        let parse = |args: &[&str]| {
            let mut all = vec!["hb", "run"];
            all.extend_from_slice(args);
            let Command::Run(args) = Cli::try_parse_noting(all).unwrap().command else {
                panic!("not run")
            };
            CommandLine {
                args,
                log_level: None,
                log_format: None,
                netns: None,
            }
            .resolve()
            .unwrap()
        };
        let old = parse(&["--timeout", "15s"]);
        let new = parse(&["--timeout", "5s", "--summary-every", "0", "--port", "5000"]);
        assert_eq!(fixed_changes(&old, &new), ["port"]);
        assert_eq!(
            changes(&old, &new),
            ["timeout 15s -> 5s", "summary_every 1m -> 0s"]
        );
        assert!(fixed_changes(&old, &old).is_empty() && changes(&old, &old).is_empty());
    }

    /// `hb run --config path`, as `main` hands it to the collector.
    fn run_with_config(path: &std::path::Path) -> CommandLine {
        let config = path.to_str().unwrap().to_owned();
        let Command::Run(args) = Cli::try_parse_noting(["hb", "run", "--config", &config])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        CommandLine {
            args,
            log_level: None,
            log_format: None,
            netns: None,
        }
    }

    /// A SIGHUP while a reload loads: another load once it is in, so that
    /// the file as it is last is the one adopted.
    #[test]
    fn a_sighup_while_loading_loads_again() {
        let path = std::env::temp_dir().join(format!("hb-reload-unit-{}.toml", std::process::id()));
        std::fs::write(&path, "timeout = \"15s\"\n").unwrap();
        let command_line = run_with_config(&path);
        let running = command_line.resolve().unwrap();
        let mut r = Reloader::new(command_line, running);
        let adopted = |r: &mut Reloader| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(a) = r.poll() {
                    return a.config.args.timeout_bound();
                }
                assert!(std::time::Instant::now() < deadline, "no reload adopted");
                thread::sleep(Duration::from_millis(5));
            }
        };
        std::fs::write(&path, "timeout = \"5s\"\n").unwrap();
        r.hangup();
        r.hangup();
        assert!(r.again);
        assert_eq!(adopted(&mut r), Duration::from_secs(5));
        // The second load started as the first was adopted.
        assert!(r.loading.is_some() && !r.again);
        // Whole or not at all: the load may read it at any moment.
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, "timeout = \"7s\"\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let second = adopted(&mut r);
        // It read the file before or after this last write: either way
        // nothing is lost, the next SIGHUP takes the rest.
        assert!(
            [5, 7].map(Duration::from_secs).contains(&second),
            "{second:?}"
        );
        assert!(r.loading.is_none());
        let _ = std::fs::remove_file(&path);
    }

    /// The default sweep is computed at start (config.md, "The sweep"): a
    /// reload to `timeout = "auto"` keeps the running 1 s and is adopted,
    /// not refused as a change of the sweep.
    #[test]
    fn a_reload_to_auto_keeps_the_default_sweep() {
        let path =
            std::env::temp_dir().join(format!("hb-reload-sweep-{}.toml", std::process::id()));
        std::fs::write(&path, "timeout = \"15s\"\n").unwrap();
        let command_line = run_with_config(&path);
        let running = command_line.resolve().unwrap();
        assert_eq!(running.args.sweep, Duration::from_secs(1));
        let mut r = Reloader::new(command_line, running);
        std::fs::write(&path, "timeout = \"auto\"\n").unwrap();
        r.hangup();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let adopted = loop {
            if let Some(a) = r.poll() {
                break a;
            }
            assert!(r.busy(), "the reload was refused or failed");
            assert!(std::time::Instant::now() < deadline, "no reload adopted");
            thread::sleep(Duration::from_millis(5));
        };
        let _ = std::fs::remove_file(&path);
        assert!(adopted.config.args.timeout.is_auto());
        assert_eq!(adopted.config.args.sweep, Duration::from_secs(1));
    }
}
