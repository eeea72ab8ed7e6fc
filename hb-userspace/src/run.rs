//! `hb run`: attach, sweep on every tick, stop cleanly on SIGINT/SIGTERM.

use std::os::fd::AsRawFd as _;

use anyhow::{Result, anyhow};
use hb_common::AuthMode;
use log::{info, warn};

use crate::{
    cli::RunArgs,
    endpoints,
    event_loop::{EventLoop, FIRST_USER_TOKEN, Wake},
    http::HttpServer,
    key, pins,
    program::{self, AuthSettings, Settings},
    sweeper::Sweeper,
    writer::{self, RingWriter},
};

const LOG_TOKEN: u64 = FIRST_USER_TOKEN;

pub fn run(args: RunArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    // Before anything is loaded: a bad key file leaves nothing behind.
    let auth = match &args.key_file {
        Some(path) => Some(AuthSettings {
            key: key::read(path)?,
            require: args.require_auth,
        }),
        None => None,
    };
    program::check_environment()?;
    // Signals are routed to the loop before anything is attached, so a
    // Ctrl-C at any point still detaches.
    let mut events = EventLoop::new(args.sweep)?;
    if let Some(other) = pins::running(&args.iface)
        && other.pid != std::process::id()
    {
        anyhow::bail!(
            "another hb run (pid {}) is already watching {}: stop it first",
            other.pid,
            args.iface
        );
    }
    let mut loaded = program::load_with(
        Settings {
            port: args.port,
            pass_heartbeats: args.pass_heartbeats,
            max_hosts: args.max_hosts,
        },
        auth.as_ref(),
        Some(&pins::pin_dir(&args.iface)),
    )?;
    // Removes the pins however `run` ends from here on.
    let _pins = PinGuard(&args.iface);
    let mut kernel_log = match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(logger) => {
            events.watch(logger.as_raw_fd(), LOG_TOKEN)?;
            Some(logger)
        }
        Err(e) => {
            warn!("kernel-side log unavailable: {e}");
            None
        }
    };
    program::attach(&mut loaded, &args.iface, args.xdp_mode)?;
    pins::write_state(
        &args.iface,
        &pins::State {
            pid: std::process::id(),
            layout: pins::LAYOUT_VERSION,
            port: args.port,
            timeout_ms: args.timeout.as_millis() as u64,
            sweep_ms: args.sweep.as_millis() as u64,
            max_hosts: args.max_hosts,
            started: crate::output::timestamp(std::time::SystemTime::now()),
            auth: auth_name(auth.as_ref()).to_owned(),
        },
    )?;
    info!(
        "watching UDP port {} on {}: timeout {}, sweep every {}, up to {} hosts, {}",
        args.port,
        args.iface,
        humantime::format_duration(args.timeout),
        humantime::format_duration(args.sweep),
        args.max_hosts,
        match program::auth_mode(auth.as_ref()) {
            AuthMode::Off => "classic PyHB heartbeats only (no --key-file)",
            AuthMode::Optional => "signed heartbeats verified, bare PyHB accepted",
            AuthMode::Required => "signed heartbeats only (bare PyHB ignored)",
        }
    );

    let mut http = match args.metrics_listen {
        Some(addr) => {
            let mut server = HttpServer::bind(addr)?;
            server.start(&mut events)?;
            info!(
                "serving /metrics and /silent on http://{}",
                server.local_addr()?
            );
            Some(server)
        }
        None => None,
    };

    let mut sweeper = Sweeper::new(args.timeout.as_nanos() as u64, args.format, Vec::new());
    let mut stdout = RingWriter::stdout();
    loop {
        match events.wait()? {
            Wake::Tick => {
                sweeper.sweep(&loaded.table, &loaded.counters)?;
                stdout.write(&mut events, &sweeper.out)?;
                sweeper.out.clear();
            }
            Wake::Done {
                token: writer::TOKEN,
                result,
            } => stdout.complete(&mut events, result)?,
            Wake::Done { token, result } if HttpServer::owns(token) => {
                if let Some(server) = http.as_mut() {
                    let ctx = endpoints::Context {
                        summary: &sweeper.summary,
                        events: &sweeper.events,
                        tracker: &sweeper.tracker,
                        table: &loaded.table,
                        timeout: args.timeout,
                        silent_series: args.metrics_silent_hosts,
                    };
                    server.complete(&mut events, token, result, &mut |req| {
                        endpoints::handle(req, &ctx)
                    })?;
                }
            }
            Wake::Done { .. } => {}
            Wake::Readable(LOG_TOKEN) => {
                if let Some(logger) = kernel_log.as_mut() {
                    logger.flush();
                    events.watch(logger.as_raw_fd(), LOG_TOKEN)?;
                }
            }
            Wake::Readable(_) => {}
            Wake::Stop(signal) => {
                info!("{signal}: detaching from {}", args.iface);
                break;
            }
        }
    }
    // Lines already queued are written before exiting.
    // A second signal gives up on a stdout reader that is stuck.
    while stdout.busy() {
        match events.wait()? {
            Wake::Done {
                token: writer::TOKEN,
                result,
            } => stdout.complete(&mut events, result)?,
            Wake::Stop(_) => break,
            _ => {}
        }
    }
    if !stdout.busy() {
        stdout.finish()?;
    }
    drop(kernel_log);
    // Dropping the program detaches it from the interface.
    drop(loaded);
    Ok(())
}

/// The auth mode as the state file and `hb status` name it.
fn auth_name(auth: Option<&AuthSettings>) -> &'static str {
    match program::auth_mode(auth) {
        AuthMode::Off => "off",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

struct PinGuard<'a>(&'a str);

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        pins::remove(self.0);
    }
}
