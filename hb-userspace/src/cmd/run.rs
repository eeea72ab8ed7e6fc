//! `hb run`: start the ingest, sweep on every tick, serve the endpoints,
//! and stop cleanly on a signal. Each part owns its completions; this is
//! only the wiring.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use log::info;

use super::key;
use crate::{
    cli::RunArgs,
    http::{HttpServer, Site},
    ingest::{self, xdp::AuthSettings},
    io::{EventLoop, RingWriter, Token, Wake},
    track::{fleet::Fleet, sweeper::Sweeper},
};

pub fn run(args: RunArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    // Before anything is loaded: a bad key file or inventory leaves
    // nothing behind.
    let auth = auth_settings(&args)?;
    let fleet = Fleet::load(&args.fleet_config())?;
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
    let mut ingest = ingest::start(&args.ingest_config(auth), &mut events)?;
    let mut http = http.map(|s| s.serve(&mut events)).transpose()?;
    let site = Site {
        ingest: ingest.kind(),
        timeout: args.timeout,
        silent_series: args.metrics_silent_hosts,
    };
    let mut sweeper = Sweeper::with_tracker(ingest.begin(args.timeout)?, args.format);
    sweeper.set_fleet(fleet);
    let mut stdout = RingWriter::stdout();
    let signal = loop {
        let (token, result, flags) = match events.wait()? {
            Wake::Tick => {
                ingest.on_tick(&mut events)?;
                sweeper.sweep(ingest.table())?;
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
    Ok(())
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
