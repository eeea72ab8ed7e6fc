//! `hb run`: start the ingest, sweep on every tick, serve the endpoints,
//! and stop cleanly on a signal. Each part owns its completions; this is
//! only the wiring.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use log::info;

use super::key;
use crate::{
    alert::{self, Notifier},
    cli::RunArgs,
    http::{HttpServer, Site},
    ingest::{self, xdp::AuthSettings},
    io::{EventLoop, RingWriter, Token, Wake},
    track::sweeper::Sweeper,
};

pub fn run(args: RunArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    // Before anything is loaded: a bad key file leaves nothing behind.
    let auth = auth_settings(&args)?;
    // Signals are routed to the loop before anything is attached, so a
    // Ctrl-C at any point still detaches.
    let mut events = EventLoop::new(args.sweep)?;
    // Bound before the ingest starts: an address that cannot be served is a
    // bad option, and must not leave a program attached (or, on a restart,
    // the last collector's program replaced by this one).
    let http = args.metrics_listen.map(bind_http).transpose()?;
    let mut ingest = ingest::start(&args.ingest_config(auth), &mut events)?;
    let mut http = http.map(|s| s.serve(&mut events)).transpose()?;
    let mut alerts = notifier(&args, ingest.kind())?;
    let site = Site {
        ingest: ingest.kind(),
        timeout: args.timeout,
        silent_series: args.metrics_silent_hosts,
        alerts: alerts.as_ref().map(Notifier::stats),
    };
    let mut sweeper = Sweeper::with_tracker(ingest.begin(args.timeout)?, args.format);
    let mut stdout = RingWriter::stdout();
    let signal = loop {
        let (token, result, flags) = match events.wait()? {
            Wake::Tick => {
                ingest.on_tick(&mut events)?;
                sweeper.sweep(ingest.table())?;
                if let Some(alerts) = alerts.as_mut() {
                    alerts.feed(&sweeper, ingest.table());
                }
                stdout.write(&mut events, sweeper.lines())?;
                // Settles at once where nothing more will be written.
                sweeper.written(stdout.bytes_written());
                continue;
            }
            Wake::Stop(signal) => break signal,
            Wake::Hangup => {
                info!(
                    "SIGHUP: ignored, hb has nothing to reload; stop it with SIGTERM (detach) or SIGUSR2 (restart)"
                );
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
    ingest.on_stop(signal);
    // Lines already queued are written before exiting.
    stdout.drain(&mut events)?;
    sweeper.written(stdout.bytes_written());
    ingest.finish();
    if let Some(alerts) = alerts {
        alerts.finish();
    }
    Ok(())
}

/// The Alertmanager notifier, with --alertmanager.
fn notifier(args: &RunArgs, ingest: &str) -> Result<Option<Notifier>> {
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
    Notifier::start(settings, args.timeout, args.sweep, iface).map(Some)
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
