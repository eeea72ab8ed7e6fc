//! The config file of `hb run` (`--config FILE`, TOML): a key for every
//! long option (`metrics-listen` → `metrics_listen`), the fleet's
//! `[inventory]` and `[groups.NAME]` tables, and nothing else: an unknown
//! key is an error. Options given on the command line override the file.
//! Every error names the file, the line and the column.
//!
//! The keys and their options are listed in docs/config.md.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::ValueEnum;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    cli::{
        AttachMode, Format, GroupPolicy, IngestKind, LogFormat, LogLevel, RunArgs, UnknownHosts,
        parse_alertmanager_url, parse_duration, parse_interval, parse_port,
    },
    track::{adaptive::Timeout, fleet::FleetError},
};

/// A config file that cannot be used, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Settings that do not go together (no one line to blame).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Options that do not go together, without a config file.
    #[error("{0}")]
    Options(String),
    #[error("inventory: {0}")]
    Fleet(#[from] FleetError),
}

/// The file as written: values still raw, with where they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    netns: Option<String>,
    log_level: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    iface: Option<String>,
    ingest: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    min_timeout: Option<Spanned<String>>,
    max_timeout: Option<Spanned<String>>,
    flap_high: Option<Spanned<i64>>,
    flap_low: Option<Spanned<i64>>,
    sweep: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    pass_heartbeats: Option<bool>,
    any_destination: Option<bool>,
    max_hosts: Option<Spanned<i64>>,
    max_bare_hosts: Option<Spanned<i64>>,
    format: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    metrics_silent_hosts: Option<Spanned<i64>>,
    key_file: Option<PathBuf>,
    require_auth: Option<bool>,
    bpffs: Option<PathBuf>,
    summary_every: Option<Spanned<String>>,
    forget_after: Option<Spanned<String>>,
    inventory: Option<RawInventory>,
    groups: Option<BTreeMap<String, RawGroup>>,
    alerting: Option<RawAlerting>,
    on_event: Option<String>,
    on_event_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerting {
    alertmanager: Option<Vec<Spanned<String>>>,
    resend: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    file: Option<PathBuf>,
    grace: Option<Spanned<String>>,
    unknown_hosts: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    timeout: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
}

/// What a config file says, every value checked; `None`: not in the file.
/// Relative paths are resolved against the file's directory.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileSettings {
    pub netns: Option<String>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub iface: Option<String>,
    pub ingest: Option<IngestKind>,
    pub listen: Option<IpAddr>,
    pub port: Option<u16>,
    pub timeout: Option<Timeout>,
    pub min_timeout: Option<Duration>,
    pub max_timeout: Option<Duration>,
    pub flap_high: Option<u8>,
    pub flap_low: Option<u8>,
    pub sweep: Option<Duration>,
    pub xdp_mode: Option<AttachMode>,
    pub pass_heartbeats: Option<bool>,
    pub any_destination: Option<bool>,
    pub max_hosts: Option<u32>,
    pub max_bare_hosts: Option<u32>,
    pub format: Option<Format>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_silent_hosts: Option<usize>,
    pub key_file: Option<PathBuf>,
    pub require_auth: Option<bool>,
    pub bpffs: Option<PathBuf>,
    pub summary_every: Option<Duration>,
    pub inventory: Option<PathBuf>,
    pub grace: Option<Duration>,
    pub unknown_hosts: Option<UnknownHosts>,
    pub forget_after: Option<Duration>,
    pub groups: BTreeMap<String, GroupPolicy>,
    pub alertmanager: Option<Vec<String>>,
    pub alert_resend: Option<Duration>,
    pub on_event: Option<String>,
    pub on_event_timeout: Option<Duration>,
    /// The file's text, to point at a key when settings clash.
    text: String,
}

/// The file being read: to turn spans into lines and columns.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::At {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }

    fn duration(
        &self,
        key: &str,
        v: Option<Spanned<String>>,
    ) -> Result<Option<Duration>, ConfigError> {
        self.parsed(key, v, parse_duration)
    }

    /// A string value parsed by `parse`, its error said at the value.
    fn parsed<T>(
        &self,
        key: &str,
        v: Option<Spanned<String>>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let span = v.span();
        parse(v.get_ref())
            .map(Some)
            .map_err(|e| self.at(span, format!("{key}: {e}")))
    }

    /// One of a clap value enum's names (`ingest = "xdp"`).
    fn choice<T: ValueEnum>(
        &self,
        key: &str,
        v: Option<Spanned<String>>,
    ) -> Result<Option<T>, ConfigError> {
        self.parsed(key, v, |s| {
            T::from_str(s, false).map_err(|_| {
                let names: Vec<String> = T::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|p| format!("\"{}\"", p.get_name()))
                    .collect();
                format!("\"{s}\" is not one of {}", names.join(", "))
            })
        })
    }

    /// An integer of type `T`, at least `min`.
    fn percent(&self, key: &str, v: Option<Spanned<i64>>) -> Result<Option<u8>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let span = v.span();
        match *v.get_ref() {
            n @ 0..=100 => Ok(Some(n as u8)),
            n => Err(self.at(span, format!("{key}: {n} is not a percentage (0 to 100)"))),
        }
    }

    fn int<T: TryFrom<i64>>(
        &self,
        key: &str,
        v: Option<Spanned<i64>>,
        min: i64,
        what: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let span = v.span();
        Some(*v.get_ref())
            .filter(|n| *n >= min)
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or(())
            .map_err(|_| self.at(span, format!("{key}: {} is not {what}", v.get_ref())))
    }
}

/// Line and column of `key` (`timeout`, `inventory.grace`,
/// `groups.web.timeout`) in the TOML `text`: set at the top, dotted, or in
/// its table. Good enough to point at; the parser has checked the file.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(header) = t.strip_prefix('[') {
            table = header
                .split(']')
                .next()
                .unwrap_or_default()
                .replace([' ', '"'], "");
            continue;
        }
        let Some((name, _)) = t.split_once('=') else {
            continue;
        };
        let name = name.trim().replace([' ', '"'], "");
        let full = if table.is_empty() {
            name
        } else {
            format!("{table}.{name}")
        };
        if full == key {
            return Some((i + 1, line.len() - t.len() + 1));
        }
    }
    None
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

impl FileSettings {
    /// Reads and checks the config file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Checks `text`, the config file at `path` (relative paths in it are
    /// resolved against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let src = Source { path, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            match e.span() {
                Some(span) => src.at(span, message),
                None => ConfigError::Invalid {
                    path: path.to_owned(),
                    message,
                },
            }
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
        let inventory = raw.inventory.unwrap_or_default();
        let alerting = raw.alerting.unwrap_or_default();
        let alertmanager = match alerting.alertmanager {
            None => None,
            Some(urls) => Some(
                urls.into_iter()
                    .map(|u| {
                        let span = u.span();
                        parse_alertmanager_url(u.get_ref())
                            .map_err(|e| src.at(span, format!("alerting.alertmanager: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let mut groups = BTreeMap::new();
        for (name, g) in raw.groups.unwrap_or_default() {
            let policy = GroupPolicy {
                timeout: src.parsed(&format!("groups.{name}.timeout"), g.timeout, str::parse)?,
                grace: src.duration(&format!("groups.{name}.grace"), g.grace)?,
            };
            groups.insert(name, policy);
        }
        Ok(Self {
            netns: raw.netns,
            log_level: src.choice("log_level", raw.log_level)?,
            log_format: src.choice("log_format", raw.log_format)?,
            iface: raw.iface,
            ingest: src.choice("ingest", raw.ingest)?,
            listen: src.parsed("listen", raw.listen, |s| {
                s.parse::<IpAddr>().map_err(|_| {
                    format!("\"{s}\" is not an IP address (e.g. \"::\" or \"0.0.0.0\")")
                })
            })?,
            port: match raw.port {
                Some(p) => {
                    let span = p.span();
                    Some(
                        parse_port(&p.get_ref().to_string())
                            .map_err(|e| src.at(span, format!("port: {e}")))?,
                    )
                }
                None => None,
            },
            timeout: src.parsed("timeout", raw.timeout, str::parse)?,
            min_timeout: src.duration("min_timeout", raw.min_timeout)?,
            max_timeout: src.duration("max_timeout", raw.max_timeout)?,
            flap_high: src.percent("flap_high", raw.flap_high)?,
            flap_low: src.percent("flap_low", raw.flap_low)?,
            sweep: src.duration("sweep", raw.sweep)?,
            xdp_mode: src.choice("xdp_mode", raw.xdp_mode)?,
            pass_heartbeats: raw.pass_heartbeats,
            any_destination: raw.any_destination,
            max_hosts: src.int::<u32>(
                "max_hosts",
                raw.max_hosts,
                1,
                "a table size (1 to 4294967295)",
            )?,
            max_bare_hosts: src.int(
                "max_bare_hosts",
                raw.max_bare_hosts,
                0,
                "a number of hosts",
            )?,
            format: src.choice("format", raw.format)?,
            metrics_listen: src.parsed("metrics_listen", raw.metrics_listen, |s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    format!("\"{s}\" is not an address and port (e.g. \"127.0.0.1:9743\")")
                })
            })?,
            metrics_silent_hosts: src.int(
                "metrics_silent_hosts",
                raw.metrics_silent_hosts,
                0,
                "a number of hosts",
            )?,
            key_file: raw.key_file.map(resolve),
            require_auth: raw.require_auth,
            bpffs: raw.bpffs.map(resolve),
            summary_every: src.parsed("summary_every", raw.summary_every, parse_interval)?,
            inventory: inventory.file.map(resolve),
            grace: src.duration("inventory.grace", inventory.grace)?,
            unknown_hosts: src.choice("inventory.unknown_hosts", inventory.unknown_hosts)?,
            forget_after: src.duration("forget_after", raw.forget_after)?,
            groups,
            alertmanager,
            alert_resend: src.duration("alerting.resend", alerting.resend)?,
            on_event: raw.on_event,
            on_event_timeout: src.duration("on_event_timeout", raw.on_event_timeout)?,
            text: text.to_owned(),
        })
    }

    /// `args` (this file applied) checked together; what does not go
    /// together is said at the line of the first key it names (`--timeout`
    /// is `timeout`) that the file sets and the command line does not.
    pub fn validate(&self, path: &Path, args: &RunArgs) -> Result<(), ConfigError> {
        let Err(message) = args.validate() else {
            return Ok(());
        };
        let blamed = message
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ':')
            .filter_map(|word| match word.strip_prefix("--") {
                Some(option) => Some(option.replace('-', "_")),
                None => word.starts_with("groups.").then(|| word.to_owned()),
            })
            .filter(|key| !args.gave(key))
            .find_map(|key| locate(&self.text, &key));
        Err(match blamed {
            Some((line, column)) => ConfigError::At {
                path: path.to_owned(),
                line,
                column,
                message,
            },
            None => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })
    }

    /// Sets what the file says in `args`, but for the options its command
    /// line gave.
    pub fn apply(&self, args: &mut RunArgs) {
        macro_rules! take {
            ($($key:ident),* $(,)?) => {$(
                if !args.gave(stringify!($key)) && let Some(v) = &self.$key {
                    args.$key = v.clone();
                }
            )*};
        }
        macro_rules! take_option {
            ($($key:ident),* $(,)?) => {$(
                if !args.gave(stringify!($key)) && let Some(v) = &self.$key {
                    args.$key = Some(v.clone());
                }
            )*};
        }
        take!(
            ingest,
            listen,
            port,
            timeout,
            min_timeout,
            max_timeout,
            flap_high,
            flap_low,
            sweep,
            xdp_mode,
            pass_heartbeats,
            any_destination,
            max_hosts,
            format,
            metrics_silent_hosts,
            require_auth,
            summary_every,
            grace,
            unknown_hosts,
            forget_after,
            alertmanager,
            alert_resend,
            on_event_timeout,
        );
        take_option!(
            iface,
            max_bare_hosts,
            metrics_listen,
            key_file,
            bpffs,
            inventory,
            on_event
        );
        args.groups = self.groups.clone();
    }
}

/// The configuration `hb run` runs with: its options, with the config
/// file's settings where the command line gave none.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub args: RunArgs,
    pub log_level: Option<LogLevel>,
    pub log_format: LogFormat,
    pub netns: Option<String>,
}

/// What the command line said, kept to read the config file again at a
/// reload: the file is applied afresh to it, the command line still wins.
#[derive(Debug, Clone)]
pub struct CommandLine {
    pub args: RunArgs,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub netns: Option<String>,
}

impl CommandLine {
    /// The configuration: the command line over the config file (if any),
    /// checked. Does not load the inventory.
    pub fn resolve(&self) -> Result<RunConfig, ConfigError> {
        self.resolve_sweeping(None)
    }

    /// As `resolve`, at a reload of a collector that sweeps every
    /// `running`: a sweep that neither the command line nor the file gives
    /// stays `running`. Its default is computed once, at start, from the
    /// timeouts then (the sweep cannot change while hb runs); a reload
    /// that changes the timeouts keeps it.
    pub fn resolve_keeping_sweep(&self, running: Duration) -> Result<RunConfig, ConfigError> {
        self.resolve_sweeping(Some(running))
    }

    fn resolve_sweeping(&self, running: Option<Duration>) -> Result<RunConfig, ConfigError> {
        let mut args = self.args.clone();
        let mut file = FileSettings::default();
        let default_sweep = |args: &mut RunArgs, file: &FileSettings| {
            if !args.gave("sweep") && file.sweep.is_none() {
                args.sweep = running.unwrap_or_else(|| args.default_sweep());
            }
        };
        if let Some(path) = &self.args.config {
            file = FileSettings::read(path)?;
            file.apply(&mut args);
            default_sweep(&mut args, &file);
            file.validate(path, &args)?;
        } else {
            default_sweep(&mut args, &file);
            args.validate().map_err(ConfigError::Options)?;
        }
        Ok(RunConfig {
            args,
            log_level: self.log_level.or(file.log_level),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            netns: self.netns.clone().or(file.netns),
        })
    }
}

/// The config key of `hb run`'s long option `long`.
#[cfg(test)]
pub(crate) fn key_of(long: &str) -> String {
    match long {
        "inventory" => "inventory.file".into(),
        "grace" => "inventory.grace".into(),
        "unknown-hosts" => "inventory.unknown_hosts".into(),
        "alertmanager" => "alerting.alertmanager".into(),
        "alert-resend" => "alerting.resend".into(),
        other => other.replace('-', "_"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(text: &str) -> Result<FileSettings, String> {
        FileSettings::parse(Path::new("/etc/hb/hb.toml"), text).map_err(|e| e.to_string())
    }

    fn run(args: &[&str]) -> RunArgs {
        let mut all = vec!["hb", "run"];
        all.extend_from_slice(args);
        match Cli::try_parse_noting(all).unwrap().command {
            Command::Run(r) => r,
            _ => panic!("not run"),
        }
    }

    /// Every long option of `hb run` (its own and the global ones) has a
    /// key in the file: a file setting it is not refused as unknown.
    #[test]
    fn every_option_has_a_key() {
        let mut cli = Cli::command();
        cli.build();
        let run = cli.find_subcommand("run").expect("hb run");
        let mut checked = 0;
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version" | "config") {
                continue;
            }
            let key = key_of(long);
            // A value of the wrong type for most keys: what matters is that
            // the key is known.
            let err = parse(&format!("{key} = [1]\n")).unwrap_err();
            assert!(
                !err.contains("unknown field"),
                "--{long} has no config key `{key}`: {err}"
            );
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} options walked");
        // And the check itself can fail.
        let err = parse("no_such_option = [1]\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let err = parse("timeout = \"10s\"\n\nmetrics_lisen = \"127.0.0.1:9743\"\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:3:1: "), "{err}");
        assert!(err.contains("metrics_lisen"), "{err}");
        let err = parse("[inventory]\nfile = \"h.csv\"\ngrase = \"1s\"\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:3:1: "), "{err}");
        let err = parse("[groups.web]\ntimeout = \"5s\"\ntimeuot = \"5s\"\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:3:1: "), "{err}");
    }

    #[test]
    fn alerting_keys() {
        let f = parse("[alerting]\nalertmanager = [\"http://127.0.0.1:9093/\", \"http://[::1]:9093\"]\nresend = \"30s\"\n").unwrap();
        assert_eq!(
            f.alertmanager,
            Some(vec![
                "http://127.0.0.1:9093".to_owned(),
                "http://[::1]:9093".to_owned()
            ])
        );
        assert_eq!(f.alert_resend, Some(Duration::from_secs(30)));
        let err = parse("\n[alerting]\nalertmanager = [\"https://am:9093\"]\n").unwrap_err();
        assert!(
            err.starts_with("/etc/hb/hb.toml:3:17: alerting.alertmanager: "),
            "{err}"
        );
    }

    #[test]
    fn on_event_keys() {
        let f = parse("on_event = \"logger -t hb\"\non_event_timeout = \"3s\"\n").unwrap();
        assert_eq!(f.on_event.as_deref(), Some("logger -t hb"));
        assert_eq!(f.on_event_timeout, Some(Duration::from_secs(3)));
        let mut args = run(&[]);
        f.apply(&mut args);
        assert_eq!(args.on_event.as_deref(), Some("logger -t hb"));
        assert_eq!(args.on_event_timeout, Duration::from_secs(3));
        assert_eq!(run(&[]).on_event_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let err = parse("port = 43278\ntimeout = \"fast\"\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:2:11: timeout: "), "{err}");
        let err = parse("\n\n[inventory]\ngrace = \"0s\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/hb/hb.toml:4:9: inventory.grace: "),
            "{err}"
        );
        let err = parse("port = 70000\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:1:8: port: "), "{err}");
        let err = parse("ingest = \"ebpf\"\n").unwrap_err();
        assert!(err.contains("\"xdp\""), "{err}");
        let err = parse("[groups.db]\ngrace = \"soon\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/hb/hb.toml:2:9: groups.db.grace: "),
            "{err}"
        );
        let err = parse("max_hosts = -1\n").unwrap_err();
        assert!(
            err.starts_with("/etc/hb/hb.toml:1:13: max_hosts: "),
            "{err}"
        );
        // A value of the wrong type: toml's own message, at the value.
        let err = parse("pass_heartbeats = \"yes\"\n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:1:19: "), "{err}");
        // Not TOML at all.
        let err = parse("timeout = \n").unwrap_err();
        assert!(err.starts_with("/etc/hb/hb.toml:1:"), "{err}");
    }

    #[test]
    fn values_and_relative_paths() {
        let f = parse(
            "iface = \"eth1\"\ntimeout = \"20s\"\nsummary_every = \"0\"\nkey_file = \"keys/fleet.key\"\nforget_after = \"2d\"\n\
             [inventory]\nfile = \"hosts.csv\"\ngrace = \"45s\"\nunknown_hosts = \"ignore\"\n\
             [groups.web]\ntimeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(f.iface.as_deref(), Some("eth1"));
        assert_eq!(
            f.timeout,
            Some(crate::track::adaptive::Timeout::Fixed(Duration::from_secs(
                20
            )))
        );
        assert_eq!(f.summary_every, Some(Duration::ZERO));
        assert_eq!(f.key_file, Some(PathBuf::from("/etc/hb/keys/fleet.key")));
        assert_eq!(f.inventory, Some(PathBuf::from("/etc/hb/hosts.csv")));
        assert_eq!(f.grace, Some(Duration::from_secs(45)));
        assert_eq!(f.unknown_hosts, Some(UnknownHosts::Ignore));
        assert_eq!(f.forget_after, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(
            f.groups["web"].timeout,
            Some(crate::track::adaptive::Timeout::Fixed(Duration::from_secs(
                5
            )))
        );
        assert_eq!(f.groups["web"].grace, None);
        let f = parse("inventory.file = \"/srv/hosts.csv\"\n").unwrap();
        assert_eq!(f.inventory, Some(PathBuf::from("/srv/hosts.csv")));
    }

    #[test]
    fn settings_that_clash_are_said_at_a_line_the_file_sets() {
        let check = |text: &str, cli: &[&str]| {
            let f = parse(text).unwrap();
            let mut args = run(cli);
            f.apply(&mut args);
            f.validate(Path::new("/etc/hb/hb.toml"), &args)
                .map(|()| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        let err = check(
            "port = 1
sweep = \"2s\"\n  timeout = \"1s\"\n",
            &[],
        );
        assert!(err.starts_with("/etc/hb/hb.toml:3:3: --timeout"), "{err}");
        // The command line gave the timeout: the file's sweep is to blame.
        let err = check(
            "port = 1
sweep = \"2s\"\n",
            &["--timeout", "1s"],
        );
        assert!(err.starts_with("/etc/hb/hb.toml:2:1: --timeout"), "{err}");
        let err = check(
            "[groups.\"web\"]\ngrace = \"1m\"\ntimeout = \"500ms\"\n",
            &[],
        );
        assert!(
            err.starts_with("/etc/hb/hb.toml:3:1: groups.web.timeout"),
            "{err}"
        );
        let err = check("ingest = \"socket\"\n\npass_heartbeats = true\n", &[]);
        assert!(
            err.starts_with("/etc/hb/hb.toml:3:1: --pass-heartbeats"),
            "{err}"
        );
        // Nothing the file sets is named: the file, without a line.
        let err = check("ingest = \"socket\"\n", &["--pass-heartbeats"]);
        assert!(
            err.starts_with("/etc/hb/hb.toml: --pass-heartbeats"),
            "{err}"
        );
        assert_eq!(check("timeout = \"20s\"\n", &[]), "");
    }

    #[test]
    fn the_command_line_wins() {
        let f =
            parse("timeout = \"20s\"\nsweep = \"2s\"\niface = \"eth1\"\nport = 5000\n").unwrap();
        let mut args = run(&["--timeout", "30s", "-i", "eth9"]);
        f.apply(&mut args);
        assert_eq!(
            args.timeout,
            crate::track::adaptive::Timeout::Fixed(Duration::from_secs(30))
        );
        assert_eq!(args.iface.as_deref(), Some("eth9"));
        assert_eq!(args.sweep, Duration::from_secs(2));
        assert_eq!(args.port, 5000);
        // A default is not "given": the file's value applies.
        let mut args = run(&[]);
        f.apply(&mut args);
        assert_eq!(
            args.timeout,
            crate::track::adaptive::Timeout::Fixed(Duration::from_secs(20))
        );
    }

    /// The sweep of `hb run ARGS` with `file` as its config file, resolved
    /// at start, or at a reload of a collector sweeping every `running`.
    fn sweep_of(file: Option<&str>, args: &[&str], running: Option<Duration>) -> Duration {
        let path = std::env::temp_dir().join(format!(
            "hb-sweep-unit-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut all = args.to_vec();
        let config = path.to_str().unwrap().to_owned();
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
            all.extend(["--config", &config]);
        }
        let command_line = CommandLine {
            args: run(&all),
            log_level: None,
            log_format: None,
            netns: None,
        };
        let resolved = match running {
            None => command_line.resolve(),
            Some(r) => command_line.resolve_keeping_sweep(r),
        };
        let _ = std::fs::remove_file(&path);
        resolved.unwrap().args.sweep
    }

    /// The default sweep is min(1 s, the shortest timeout / 4) (README,
    /// config.md), whether the timeouts come from the command line or the
    /// file; a sweep either gives wins.
    #[test]
    fn the_default_sweep_follows_the_shortest_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(sweep_of(None, &[], None), ms(1000));
        assert_eq!(sweep_of(None, &["--timeout", "auto"], None), ms(500));
        let args = ["--timeout", "auto", "--min-timeout", "3s"];
        assert_eq!(sweep_of(None, &args, None), ms(750));
        assert_eq!(sweep_of(None, &["--timeout", "2s"], None), ms(500));
        assert_eq!(sweep_of(None, &["--timeout", "8s"], None), ms(1000));
        assert_eq!(sweep_of(Some("timeout = \"auto\"\n"), &[], None), ms(500));
        // A group's timeout, fixed or auto, is a timeout too.
        let groups = "[groups.fast]\ntimeout = \"1s\"\n[groups.slow]\ntimeout = \"1m\"\n";
        assert_eq!(sweep_of(Some(groups), &[], None), ms(250));
        let auto = "[groups.auto]\ntimeout = \"auto\"\n";
        assert_eq!(sweep_of(Some(auto), &[], None), ms(500));
        // Given, it wins: on the command line or in the file.
        let args = ["--timeout", "auto", "--sweep", "1s"];
        assert_eq!(sweep_of(None, &args, None), ms(1000));
        let file = "timeout = \"auto\"\nsweep = \"1s\"\n";
        assert_eq!(sweep_of(Some(file), &[], None), ms(1000));
        assert_eq!(sweep_of(Some(file), &["--sweep", "200ms"], None), ms(200));
    }

    /// At a reload the default is the running sweep: computed at start, it
    /// does not follow the reloaded timeouts (a reload cannot change the
    /// sweep); a sweep the file gives is read as before (and then refused
    /// if it differs, by the reloader).
    #[test]
    fn a_reload_keeps_the_default_sweep() {
        let ms = Duration::from_millis;
        let file = "timeout = \"auto\"\n";
        assert_eq!(sweep_of(Some(file), &[], Some(ms(1000))), ms(1000));
        assert_eq!(sweep_of(Some(file), &[], Some(ms(400))), ms(400));
        let given = "timeout = \"auto\"\nsweep = \"300ms\"\n";
        assert_eq!(sweep_of(Some(given), &[], Some(ms(1000))), ms(300));
        let args = ["--sweep", "700ms"];
        assert_eq!(sweep_of(Some(file), &args, Some(ms(1000))), ms(700));
    }
}
