//! Command-line interface (clap derive).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand,
    parser::ValueSource,
};
use hb_common::{DEFAULT_MAX_HOSTS, DEFAULT_PORT};

use crate::ingest::{self, xdp::AuthSettings};
pub use crate::{
    clock::parse_duration,
    ingest::{IngestKind, xdp::AttachMode},
    logging::{LogFormat, LogLevel},
    track::{
        adaptive::Timeout,
        events::Format,
        fleet::{FleetConfig, GroupPolicy, UnknownHosts},
    },
};

/// The longest default sweep (see `RunArgs::default_sweep`).
pub const DEFAULT_SWEEP: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "hb",
    version,
    about = "Heartbeat collector for large server fleets (XDP), and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Run in the named network namespace (/run/netns/NAME, or a path), as `ip -n NAME` does: only the network namespace changes, so pins stay in the host's bpffs.
    #[arg(long, global = true, value_name = "NAME", display_order = 1000)]
    pub netns: Option<String>,
    /// Diagnostics on stderr up to this level (default info; overrides RUST_LOG).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "LEVEL",
        display_order = 1000
    )]
    pub log_level: Option<LogLevel>,
    /// Diagnostics on stderr as text, or as JSON lines (ts, level, target, message).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        display_order = 1000
    )]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// Parses `args` (the program name first), noting which `hb run`
    /// options the command line gave: those override the config file.
    pub fn try_parse_noting<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let (Command::Run(run), Some(("run", sub))) = (&mut cli.command, matches.subcommand()) {
            run.given = given(sub);
        }
        Ok(cli)
    }

    /// `try_parse_noting` of the process's arguments; on an error, clap's
    /// message and exit (status 2), as `Cli::parse` does.
    pub fn parse_noting() -> Self {
        Self::try_parse_noting(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

/// The ids of the options the command line gave in `matches`.
fn given(matches: &ArgMatches) -> BTreeSet<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_owned())
        .collect()
}

#[derive(Subcommand, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only add noise"
)]
pub enum Command {
    /// Attach the XDP collector to an interface and report silent hosts.
    Run(RunArgs),
    /// Send heartbeats to a collector, like the classic PyHeartBeat client.
    Beat(BeatArgs),
    /// Print the summary and silent hosts of the collector running on an interface.
    Status(StatusArgs),
    /// Detach the program that `hb run` left attached (after SIGUSR2, SIGKILL or a crash) and remove its pinned state.
    Detach(DetachArgs),
    /// Clear one signed host's replay state, so that its next valid heartbeat is accepted whatever its sequence number.
    Forget(ForgetArgs),
    /// Print a shell's completion script, e.g. `hb completions bash > /etc/bash_completion.d/hb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print hb's man page (roff), e.g. `hb man > /usr/local/share/man/man1/hb.1`.
    Man,
    /// Check an `hb run` config file (and the inventory it names): say what is wrong, with the line.
    CheckConfig(CheckConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// The TOML file `hb run --config` would read.
    pub file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ForgetArgs {
    /// Interface the collector watches.
    #[arg(long, short = 'i')]
    pub iface: String,
    /// Host id whose replay state to clear, decimal or 0x-hex.
    #[arg(long, value_name = "N", value_parser = parse_host_id)]
    pub host_id: u64,
    /// The bpffs `hb run` pinned in, if it was given --bpffs.
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct DetachArgs {
    /// Interface to detach hb from.
    #[arg(long, short = 'i')]
    pub iface: String,
    /// Detach even while an `hb run` holds the interface's lock (it keeps running, without a program).
    #[arg(long)]
    pub force: bool,
    /// The bpffs `hb run` pinned in, if it was given --bpffs.
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Interface the collector watches.
    #[arg(long, short = 'i')]
    pub iface: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Show at most this many silent hosts (longest silent first), and as many missing ones.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// The collector's inventory (CSV): names and labels of the hosts shown, and the inventoried hosts not heard (missing).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// The bpffs `hb run` pinned in, if it was given --bpffs.
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Read settings from this TOML file; options given here override it. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface that receives the heartbeats (XDP; default: the interface of the default route; not needed with --ingest socket).
    #[arg(long, short = 'i')]
    pub iface: Option<String>,
    /// How heartbeats come in: xdp (in the kernel, before any socket), socket (a UDP socket through io_uring), or auto (xdp, else socket with a warning).
    #[arg(long, value_enum, default_value_t = IngestKind::Auto)]
    pub ingest: IngestKind,
    /// Socket mode: the address to receive on ([::] takes IPv4 and IPv6).
    #[arg(long, value_name = "ADDR", default_value = "::")]
    pub listen: IpAddr,
    /// UDP port heartbeats are sent to.
    #[arg(long, default_value_t = DEFAULT_PORT, value_parser = parse_port)]
    pub port: u16,
    /// A host is silent when its last heartbeat is older than this (e.g. 500ms, 15s, 2m), or auto: learned per host from its heartbeat intervals.
    #[arg(long, default_value = "15s", value_parser = clap::value_parser!(Timeout))]
    pub timeout: Timeout,
    /// The shortest timeout auto gives a host.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = parse_duration)]
    pub min_timeout: Duration,
    /// The longest timeout auto gives a host, and the one it has until it has beaten 4 times.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub max_timeout: Duration,
    /// Flap damping: a host whose state changed in this share (percent) of its recent checks is reported `flapping` and its silent/recovered held back (0: off).
    #[arg(long, value_name = "PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub flap_high: u8,
    /// Flap damping: a flapping host whose share falls below this is reported `flapping_end` and its state.
    #[arg(long, value_name = "PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub flap_low: u8,
    /// How often the host table is swept [default: 1s, or a quarter of the shortest timeout if less: 500ms with --timeout auto].
    #[arg(long, value_name = "D", default_value = "1s", hide_default_value = true, value_parser = parse_duration)]
    pub sweep: Duration,
    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Let heartbeats continue to sockets after they are recorded.
    #[arg(long)]
    pub pass_heartbeats: bool,
    /// Take heartbeats to any MAC and IP address (mirror and SPAN ports); by default only those addressed to this host.
    #[arg(long)]
    pub any_destination: bool,
    /// Capacity of the host table; heartbeats from further new hosts are counted as table_full.
    #[arg(long, default_value_t = DEFAULT_MAX_HOSTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hosts: u32,
    /// How many hosts known by address (bare PyHB) the table takes; further new ones are counted as table_full. Default: half of --max-hosts with --key-file (signed hosts always find the other half), all of it otherwise.
    #[arg(long, value_name = "N")]
    pub max_bare_hosts: Option<u32>,
    /// Output format of events and summaries on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Serve GET /metrics (Prometheus) and GET /silent (JSON) on this address, e.g. 127.0.0.1:9743.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Add a per-host series (hb_host_silent_seconds) for up to N silent hosts, longest silent first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub metrics_silent_hosts: usize,
    /// Fleet key (32 hex digits or 16 raw bytes, mode 600): verify signed heartbeats (`hb beat --key-file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Ignore bare `PyHB` heartbeats (counted as unauthenticated); needs --key-file.
    #[arg(long)]
    pub require_auth: bool,
    /// Pin the program and maps in the bpffs mounted at DIR (default: /sys/fs/bpf, else the host's through /proc/1/root, else one hb mounts).
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Print the summary line on stdout at most this often (0: never); sweeps, metrics and `hb status` are unaffected.
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_interval)]
    pub summary_every: Duration,
    /// The hosts expected to beat: a CSV file (`address` or `host_id`, optional `name`, labels).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// An inventoried host not heard this long after start (or after it is added) is `missing`.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Hosts outside the inventory: track (reported `new`) or ignore (counted only).
    #[arg(long, value_enum, default_value_t = UnknownHosts::Track)]
    pub unknown_hosts: UnknownHosts,
    /// Hosts outside the inventory are forgotten after this long silent.
    #[arg(long, value_name = "D", default_value = "7d", value_parser = parse_duration)]
    pub forget_after: Duration,
    /// `[groups.NAME]` of the config file (no option).
    #[arg(skip)]
    pub groups: BTreeMap<String, GroupPolicy>,
    /// The ids of the options the command line gave (`Cli::try_parse_noting`).
    #[arg(skip)]
    pub given: BTreeSet<String>,
    /// Push alerts (HostSilent, CollectorBlind) to this Alertmanager (API v2), e.g. http://127.0.0.1:9093; repeat for each member of a cluster.
    #[arg(long, value_name = "URL", value_parser = parse_alertmanager_url)]
    pub alertmanager: Vec<String>,
    /// How often firing alerts are sent again (their endsAt is 4 times this ahead).
    #[arg(long, value_name = "D", default_value = "1m", value_parser = parse_duration)]
    pub alert_resend: Duration,
    /// Run this command (with `sh -c`) on each batch of events, given as JSON lines on its stdin; one at a time.
    #[arg(long, value_name = "CMD")]
    pub on_event: Option<String>,
    /// --on-event commands running longer are killed (and counted as failed).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub on_event_timeout: Duration,
}

/// An Alertmanager base URL: http only (hb speaks no TLS; put a local proxy in between).
pub fn parse_alertmanager_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!("`{s}`: expected http://HOST:PORT (https is not supported: use a local TLS proxy)")
    })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{s}`: no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[derive(Args, Debug, Clone)]
pub struct BeatArgs {
    /// Collector address: an IPv4 or IPv6 address or a host name, optionally with :port. Repeat it to beat to several collectors (an HA pair): each gets every heartbeat.
    #[arg(long, short = 's', required = true)]
    pub server: Vec<String>,
    /// Collector UDP port (when --server has none).
    #[arg(long, default_value_t = DEFAULT_PORT, value_parser = parse_port)]
    pub port: u16,
    /// Time between heartbeats.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub period: Duration,
    /// Local address to send from (default: chosen by the routing table).
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Stop after this many heartbeats (default: run until killed).
    #[arg(long)]
    pub count: Option<u64>,
    /// Sign heartbeats with this fleet key (32 hex digits or 16 raw bytes, mode 600).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Host id of signed heartbeats, decimal or 0x-hex (default: derived from /etc/machine-id).
    #[arg(long, value_name = "N", value_parser = parse_host_id)]
    pub host_id: Option<u64>,
}

/// A period that may be zero: `0` (or `0s`) turns the thing off.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 10s or 5m, or 0 for never)"))
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("`{s}` is not a UDP port (1-65535)")),
    }
}

/// A 64-bit host id: decimal, or hex with `0x`.
pub fn parse_host_id(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    parsed.map_err(|_| format!("`{s}` is not a host id (a 64-bit number, decimal or 0x-hex)"))
}

impl BeatArgs {
    /// Checks that options make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.host_id.is_some() && self.key_file.is_none() {
            return Err(
                "--host-id names the host in signed heartbeats: add --key-file FILE (the fleet key)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl RunArgs {
    /// What the ingest is started with.
    pub fn ingest_config(&self, auth: Option<AuthSettings>) -> ingest::Config {
        ingest::Config {
            kind: self.ingest,
            iface: self.iface.clone(),
            bpffs: self.bpffs.clone(),
            listen: self.listen,
            port: self.port,
            max_hosts: self.max_hosts,
            max_bare_hosts: self.max_bare_hosts,
            pass_heartbeats: self.pass_heartbeats,
            any_destination: self.any_destination,
            attach_mode: self.xdp_mode,
            auth,
            timeout: self.timeout_bound(),
            auto: self.auto_bounds(),
            sweep: self.sweep,
        }
    }

    /// The longest a host can go unheard before it is silent: `--timeout`,
    /// or `--max-timeout` for auto (what alerts and `hb status` take as
    /// the timeout).
    pub fn timeout_bound(&self) -> Duration {
        self.timeout.bound(self.max_timeout)
    }

    /// The shortest timeout any host can have: `--timeout`'s or a
    /// group's, `--min-timeout` where one of them is auto.
    pub fn shortest_timeout(&self) -> Duration {
        let of = |t: Timeout| match t {
            Timeout::Fixed(d) => d,
            Timeout::Auto => self.min_timeout,
        };
        let groups = self.groups.values().filter_map(|g| g.timeout);
        groups
            .chain([self.timeout])
            .map(of)
            .min()
            .unwrap_or(self.min_timeout)
    }

    /// The sweep when neither the command line nor the config file gives
    /// one: `DEFAULT_SWEEP`, or a quarter of the shortest timeout if that
    /// is less. A sweep adds up to one sweep to every detection: 1 s is
    /// little against 15 s, but half of what a 1 s host's learned timeout
    /// (about 2.25 s) allows.
    pub fn default_sweep(&self) -> Duration {
        (self.shortest_timeout() / 4).min(DEFAULT_SWEEP)
    }

    /// The bounds of auto timeouts.
    pub fn auto_policy(&self) -> crate::track::adaptive::Policy {
        crate::track::adaptive::Policy::new(self.min_timeout, self.max_timeout)
    }

    /// The bounds of auto timeouts where `--timeout` is `auto`, for what
    /// tells the collector's settings (logs, `hb status`).
    pub fn auto_bounds(&self) -> Option<crate::track::adaptive::Policy> {
        self.timeout.is_auto().then(|| self.auto_policy())
    }

    /// What the configuration says about the fleet.
    pub fn fleet_config(&self) -> FleetConfig {
        FleetConfig {
            inventory: self.inventory.clone(),
            grace: self.grace,
            unknown_hosts: self.unknown_hosts,
            forget_after: self.forget_after,
            groups: self.groups.clone(),
        }
    }

    /// Whether the command line gave option `id` (it then overrides the
    /// config file).
    pub fn gave(&self, id: &str) -> bool {
        self.given.contains(id)
    }

    /// Checks that options make sense together. (Without --iface, XDP
    /// takes the default route's interface: see `cmd::run`.)
    pub fn validate(&self) -> Result<(), String> {
        if self.ingest == IngestKind::Socket {
            if self.pass_heartbeats {
                return Err("--pass-heartbeats is for XDP: in socket mode heartbeats are not filtered, drop the option".into());
            }
            if self.any_destination {
                return Err("--any-destination is for XDP: a socket only receives what is addressed to this host, drop the option".into());
            }
            if self.key_file.is_some() {
                return Err("--key-file needs XDP: socket mode does not verify signed heartbeats; use --ingest xdp".into());
            }
            if self.max_bare_hosts.is_some() {
                return Err("--max-bare-hosts is for XDP: socket mode accepts only bare hosts, drop the option".into());
            }
            if self.bpffs.is_some() {
                return Err(
                    "--bpffs is for XDP: in socket mode nothing is pinned, drop the option".into(),
                );
            }
        }
        if let Some(n) = self.max_bare_hosts
            && n > self.max_hosts
        {
            return Err(format!(
                "--max-bare-hosts ({n}) cannot exceed --max-hosts ({}): it is the bare hosts' share of the table",
                self.max_hosts
            ));
        }
        if let Timeout::Fixed(t) = self.timeout
            && t <= self.sweep
        {
            return Err(format!(
                "--timeout ({}) must be longer than --sweep ({}): otherwise every host looks silent between sweeps",
                humantime::format_duration(t),
                humantime::format_duration(self.sweep)
            ));
        }
        let auto = self.timeout.is_auto()
            || self
                .groups
                .values()
                .any(|g| g.timeout.is_some_and(Timeout::is_auto));
        if auto && self.min_timeout <= self.sweep {
            return Err(format!(
                "--min-timeout ({}) must be longer than --sweep ({}): otherwise every host looks silent between sweeps",
                humantime::format_duration(self.min_timeout),
                humantime::format_duration(self.sweep)
            ));
        }
        if self.max_timeout < self.min_timeout {
            return Err(format!(
                "--max-timeout ({}) cannot be shorter than --min-timeout ({})",
                humantime::format_duration(self.max_timeout),
                humantime::format_duration(self.min_timeout)
            ));
        }
        if self.flap_high > 0 && self.flap_low > self.flap_high {
            return Err(format!(
                "--flap-low ({}) cannot exceed --flap-high ({}): a host would stop flapping before it starts",
                self.flap_low, self.flap_high
            ));
        }
        for (name, group) in &self.groups {
            if let Some(Timeout::Fixed(t)) = group.timeout
                && t <= self.sweep
            {
                return Err(format!(
                    "groups.{name}.timeout ({}) must be longer than --sweep ({})",
                    humantime::format_duration(t),
                    humantime::format_duration(self.sweep)
                ));
            }
        }
        if self.require_auth && self.key_file.is_none() {
            return Err(
                "--require-auth needs the fleet key that signs heartbeats: add --key-file FILE"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("15").unwrap_err().contains("500ms"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("43278"), Ok(43278));
        assert_eq!(parse_port("1"), Ok(1));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("http").is_err());
    }

    #[test]
    fn alertmanager_options() {
        let run = |extra: &[&str]| {
            let args = [&["hb", "run", "-i", "eth0"], extra].concat();
            Cli::try_parse_from(args).map(|c| match c.command {
                Command::Run(r) => r,
                _ => panic!("not run"),
            })
        };
        let r = run(&[]).unwrap();
        assert!(r.alertmanager.is_empty());
        assert_eq!(r.alert_resend, Duration::from_secs(60));
        let r = run(&[
            "--alertmanager",
            "http://127.0.0.1:9093/",
            "--alertmanager",
            "http://[::1]:9094",
            "--alert-resend",
            "10s",
        ])
        .unwrap();
        assert_eq!(
            r.alertmanager,
            ["http://127.0.0.1:9093", "http://[::1]:9094"]
        );
        assert_eq!(r.alert_resend, Duration::from_secs(10));
        assert!(run(&["--alertmanager", "https://am:9093"]).is_err());
        assert!(run(&["--alertmanager", "am:9093"]).is_err());
    }

    #[test]
    fn run_defaults_and_validation() {
        let cli = Cli::try_parse_from(["hb", "run", "--iface", "eth0"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.port, 43278);
        assert_eq!(
            run.timeout,
            crate::track::adaptive::Timeout::Fixed(Duration::from_secs(15))
        );
        assert_eq!(run.sweep, Duration::from_secs(1));
        assert_eq!(run.xdp_mode, AttachMode::Auto);
        assert_eq!(run.format, Format::Text);
        assert!(run.validate().is_ok());

        let cli = Cli::try_parse_from([
            "hb",
            "run",
            "-i",
            "eth0",
            "--timeout",
            "1s",
            "--sweep",
            "2s",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.validate().unwrap_err().contains("--timeout"));

        // --min-timeout only matters under auto: a fixed timeout with a
        // sweep past it is fine; auto with such a sweep is not.
        let run_of = |args: &[&str]| {
            let cli = Cli::try_parse_from(["hb", "run", "-i", "eth0"].iter().chain(args)).unwrap();
            let Command::Run(run) = cli.command else {
                panic!("not run")
            };
            run.validate()
        };
        assert!(run_of(&["--timeout", "4s", "--sweep", "2s"]).is_ok());
        let auto = run_of(&["--timeout", "auto", "--sweep", "2s"]).unwrap_err();
        assert!(auto.contains("--min-timeout"), "{auto}");
        assert!(run_of(&["--timeout", "auto", "--sweep", "2s", "--min-timeout", "3s"]).is_ok());

        assert!(Cli::try_parse_from(["hb", "run", "-i", "eth0", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["hb", "run", "-i", "eth0", "--max-hosts", "0"]).is_err());
        assert!(Cli::try_parse_from(["hb", "run", "-i", "eth0", "--xdp-mode", "hw"]).is_err());
    }

    #[test]
    fn auth_options() {
        let run = |args: &[&str]| {
            let mut all = vec!["hb", "run", "-i", "eth0"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).unwrap().command {
                Command::Run(r) => r,
                _ => panic!("not run"),
            }
        };
        assert!(run(&[]).key_file.is_none());
        assert!(!run(&[]).require_auth);
        let r = run(&["--key-file", "/etc/hb.key", "--require-auth"]);
        assert_eq!(
            r.key_file.as_deref(),
            Some(std::path::Path::new("/etc/hb.key"))
        );
        assert!(r.validate().is_ok());
        let e = run(&["--require-auth"]).validate().unwrap_err();
        assert!(e.contains("--key-file"), "{e}");

        let beat = |args: &[&str]| {
            let mut all = vec!["hb", "beat", "-s", "::1"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Beat(b)) => Ok(b),
                Ok(_) => panic!("not beat"),
                Err(e) => Err(e),
            }
        };
        let b = beat(&["--key-file", "k", "--host-id", "0x2a"]).unwrap();
        assert_eq!(b.host_id, Some(42));
        assert!(b.validate().is_ok());
        assert_eq!(
            beat(&["--key-file", "k", "--host-id", "18446744073709551615"])
                .unwrap()
                .host_id,
            Some(u64::MAX)
        );
        assert!(beat(&["--key-file", "k", "--host-id", "-1"]).is_err());
        assert!(beat(&["--key-file", "k", "--host-id", "0xg"]).is_err());
        let e = beat(&["--host-id", "7"]).unwrap().validate().unwrap_err();
        assert!(e.contains("--key-file"), "{e}");
    }
}
