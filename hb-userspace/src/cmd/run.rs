//! `hb run`: start the ingest, sweep on every tick, serve the endpoints,
//! reload on SIGHUP, and stop cleanly on a signal. Each part owns its
//! completions; this is only the wiring.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use log::{debug, info};

use super::{default_route, join_mounts, key, reload::Reloader};
use crate::{
    alert,
    cli::{IngestKind, RunArgs},
    config::{CommandLine, RunConfig},
    http::{HttpServer, Site},
    ingest::{self, xdp::AuthSettings},
    io::{EventLoop, RingWriter, Token, Wake},
    logging,
    notify::Notifier,
    track::{fleet::Fleet, sweeper::Sweeper},
};

/// Runs the collector with `config`; `command_line` is what a reload
/// applies the config file to again.
pub fn run(config: RunConfig, command_line: CommandLine) -> Result<()> {
    let args = &config.args;
    // Said first, before anything else is logged.
    let iface = match (&args.iface, args.ingest) {
        (Some(iface), _) => Some(iface.clone()),
        (None, IngestKind::Socket) => None,
        (None, _) => {
            let Some(iface) = default_route::interface() else {
                bail!(
                    "no --iface given and no default route to take the interface from: give --iface IF (the interface heartbeats arrive on), or --ingest socket"
                );
            };
            info!("no --iface given: watching {iface}, the interface of the default route");
            Some(iface)
        }
    };
    if args.bpffs.is_none() && args.ingest != IngestKind::Socket {
        join_mounts(true)?;
    }
    debug!("running with {args:?}");
    // Before anything is loaded: a bad key file or inventory leaves nothing
    // behind.
    let auth = auth_settings(args)?;
    let fleet = Fleet::load(&args.fleet_config()).map_err(|e| anyhow!("inventory: {e}"))?;
    if let Some(inv) = fleet.inventory() {
        info!(
            "inventory {}: {} hosts, {} label sets",
            inv.path().display(),
            inv.len(),
            inv.label_sets()
        );
    }
    // Signals are routed to the loop before anything is attached, so a
    // Ctrl-C at any point still detaches.
    let mut events = EventLoop::new(args.sweep)?;
    // Bound before the ingest starts: an address that cannot be served is a
    // bad option, and must not leave a program attached (or, on a restart,
    // the last collector's program replaced by this one).
    let http = args.metrics_listen.map(bind_http).transpose()?;
    let mut ingest_config = args.ingest_config(auth);
    ingest_config.iface = iface;
    let mut ingest = ingest::start(&ingest_config, &mut events)?;
    let mut http = http.map(|s| s.serve(&mut events)).transpose()?;
    let mut alerts = notifier(args, ingest.kind())?;
    let mut on_event = args
        .on_event
        .clone()
        .map(|cmd| alert::OnEvent::start(cmd, args.on_event_timeout))
        .transpose()?;
    let mut site = Site {
        ingest: ingest.kind(),
        timeout: args.timeout_bound(),
        sweep: args.sweep,
        silent_series: args.metrics_silent_hosts,
        alerts: alerts.as_ref().map(alert::Notifier::stats),
        on_event: on_event.as_ref().map(alert::OnEvent::stats),
    };
    // Resuming, a silent host that beat in the gap was silent since at
    // least the last sweep less the shortest timeout it can have.
    // (A group's timeout counts: its hosts may be the ones that beat.)
    let mut sweeper = Sweeper::with_tracker(ingest.begin(args.shortest_timeout())?, args.format);
    sweeper.set_timeout_policy(args.timeout, args.auto_policy());
    sweeper.set_flap(args.flap_high, args.flap_low);
    sweeper.set_summary_every(summary_sweeps(args));
    sweeper.set_adopt_budget(args.sweep / 4);
    if let Some(path) = ingest.fleet_file() {
        sweeper.keep_fleet(path);
    }
    sweeper.set_fleet(fleet);
    let mut stdout = RingWriter::stdout(args.max_hosts);
    let mut notify = Notifier::from_env(args.sweep);
    let mut reloader = Reloader::new(command_line, config);
    let signal = loop {
        let (token, result, flags) = match events.wait()? {
            Wake::Tick => {
                let reloading = reloader.busy();
                if let Some(new) = reloader.poll() {
                    let a = &new.config.args;
                    sweeper.set_timeout_policy(a.timeout, a.auto_policy());
                    sweeper.set_flap(a.flap_high, a.flap_low);
                    ingest.set_timeout(a.timeout_bound(), a.auto_bounds());
                    sweeper.set_summary_every(summary_sweeps(a));
                    // Adopted once its hosts are looked up in the table,
                    // a share of a sweep at a time.
                    sweeper.reload_fleet(new.fleet);
                    site.timeout = a.timeout_bound();
                    site.silent_series = a.metrics_silent_hosts;
                    logging::set(new.config.log_level, new.config.log_format);
                }
                if reloading && !reloader.busy() {
                    notify.reloaded();
                }
                ingest.on_tick(&mut events)?;
                sweeper.sweep(ingest.table())?;
                if let Some(alerts) = alerts.as_mut() {
                    alerts.feed(&sweeper, ingest.table());
                }
                if let Some(on_event) = on_event.as_mut() {
                    on_event.feed(&sweeper, ingest.table());
                }
                stdout.write_from(&mut events, sweeper.lines_mut())?;
                // Settles at once where nothing more will be written.
                sweeper.written(stdout.bytes_written());
                // READY=1 after the first sweep, then watchdog pings.
                notify.swept();
                continue;
            }
            Wake::Stop(signal) => break signal,
            Wake::Hangup => {
                // READY=1 again once the reload is adopted or refused.
                notify.reloading();
                reloader.hangup();
                if !reloader.busy() {
                    notify.reloaded();
                }
                continue;
            }
            Wake::Done {
                token,
                result,
                flags,
            } => (token, result, flags),
        };
        match token {
            Token::Stdout => {
                stdout.complete(&mut events, result)?;
                sweeper.written(stdout.bytes_written());
            }
            Token::Ingest(op) => ingest.complete(&mut events, op, result, flags)?,
            Token::Http { conn, op } => {
                if let Some(server) = http.as_mut() {
                    server.complete(&mut events, conn, op, result, &mut |req| {
                        site.handle(req, &sweeper, ingest.table())
                    })?;
                }
            }
            // The loop's own: never handed out.
            Token::Tick | Token::Signal => {}
        }
    };
    notify.stopping(signal);
    ingest.on_stop(signal);
    // Lines already queued are written before exiting.
    stdout.drain(&mut events)?;
    sweeper.written(stdout.bytes_written());
    ingest.finish();
    if let Some(on_event) = on_event {
        on_event.finish();
    }
    if let Some(alerts) = alerts {
        alerts.finish();
    }
    Ok(())
}

/// Sweeps between summary lines: at most one per `--summary-every` (0:
/// none), at least one sweep apart.
fn summary_sweeps(args: &RunArgs) -> u32 {
    if args.summary_every.is_zero() {
        return 0;
    }
    let sweeps = args
        .summary_every
        .as_nanos()
        .div_ceil(args.sweep.as_nanos());
    sweeps.clamp(1, u32::MAX.into()) as u32
}

/// The Alertmanager notifier, with --alertmanager.
fn notifier(args: &RunArgs, ingest: &str) -> Result<Option<alert::Notifier>> {
    if args.alertmanager.is_empty() {
        return Ok(None);
    }
    let name = alert::hostname();
    let generator_url = args.metrics_listen.map(|a| match a.ip().is_unspecified() {
        true => format!("http://{name}:{}/silent", a.port()),
        false => format!("http://{a}/silent"),
    });
    let collector = alert::Collector {
        name,
        watches: args
            .iface
            .clone()
            .unwrap_or_else(|| format!("socket:{}", args.port)),
    };
    let mut settings = alert::Settings::new(args.alertmanager.clone(), args.alert_resend);
    settings.generator_url = generator_url;
    settings.collector = collector;
    // The interface's state tells blindness in XDP mode only: a socket
    // listens on all of them.
    let iface = args.iface.clone().filter(|_| ingest == "xdp");
    alert::Notifier::start(settings, args.timeout_bound(), args.sweep, iface).map(Some)
}

/// Binds the endpoint, waiting a little while the address is in use: the
/// collector this one replaces lets go of it only once the kernel has torn
/// down its ring, a moment after it exited.
fn bind_http(addr: std::net::SocketAddr) -> Result<HttpServer> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match HttpServer::bind(addr) {
            Err(e)
                if Instant::now() < deadline
                    && e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            bound => return bound,
        }
    }
}

fn auth_settings(args: &RunArgs) -> Result<Option<AuthSettings>> {
    let Some(path) = &args.key_file else {
        return Ok(None);
    };
    Ok(Some(AuthSettings {
        key: key::read(path)?,
        require: args.require_auth,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn sweeps(args: &[&str]) -> u32 {
        let mut all = vec!["hb", "run"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(r) => summary_sweeps(&r),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn summary_lines_at_most_every_summary_every() {
        assert_eq!(sweeps(&[]), 60);
        assert_eq!(sweeps(&["--summary-every", "0"]), 0);
        assert_eq!(sweeps(&["--summary-every", "1500ms"]), 2);
        assert_eq!(sweeps(&["--summary-every", "100ms"]), 1);
        assert_eq!(sweeps(&["--sweep", "200ms", "--summary-every", "1s"]), 5);
    }
}
