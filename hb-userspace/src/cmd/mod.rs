//! The subcommands, one file each.

mod beat;
mod check_config;
mod completions;
mod default_route;
mod detach;
mod forget;
mod key;
mod man;
mod netns;
mod reload;
mod run;
mod status;

pub use beat::{Signer, beat, default_host_id};
pub use check_config::check_config;
pub use completions::completions;
pub use detach::detach;
pub use forget::forget;
pub use key::parse as parse_key;
pub use man::man;
pub use run::run;
pub use status::status;

use std::process::ExitCode;

use anyhow::Result;

use crate::{
    cli::{Cli, Command},
    config::CommandLine,
    ingest::xdp::join_host_mounts,
    logging,
};

impl Cli {
    /// Settles the process's namespaces, then runs the subcommand. Returns
    /// the exit status; errors are status 1.
    ///
    /// Namespaces first, while no other thread runs (`setns` changes the
    /// calling thread; a mount namespace can only be joined by a process
    /// with one thread): `--netns`, then, for the commands that use pins
    /// without `--bpffs`, the host's mount namespace where this one has no
    /// bpffs (`ip netns exec`; see `xdp::join_host_mounts`).
    ///
    /// `hb run` reads its config file first: it may name the namespace.
    pub fn execute(self) -> Result<ExitCode> {
        if let Command::Run(args) = self.command {
            let command_line = CommandLine {
                args,
                log_level: self.log_level,
                log_format: self.log_format,
                netns: self.netns,
            };
            let config = command_line.resolve()?;
            logging::set(config.log_level, config.log_format);
            if let Some(name) = &config.netns {
                netns::enter(name)?;
            }
            return run(config, command_line).map(|()| ExitCode::SUCCESS);
        }
        if let Some(name) = &self.netns {
            netns::enter(name)?;
        }
        let pins_here = match &self.command {
            Command::Status(a) => a.bpffs.is_none(),
            Command::Detach(a) => a.bpffs.is_none(),
            Command::Forget(a) => a.bpffs.is_none(),
            Command::Run(_)
            | Command::Beat(_)
            | Command::CheckConfig(_)
            | Command::Completions { .. }
            | Command::Man => false,
        };
        if pins_here {
            join_mounts(false)?;
        }
        self.command.execute()
    }
}

/// Joins the host's mount namespace where this one has no bpffs; says so
/// (at info level for `hb run`, whose pins then are the host's).
fn join_mounts(loud: bool) -> Result<()> {
    if let Some(pid) = join_host_mounts()? {
        let why = format!(
            "no bpffs in this mount namespace (e.g. under `ip netns exec`): using the host's, in the mount namespace of pid {pid}"
        );
        if loud {
            log::info!("{why}");
        } else {
            log::debug!("{why}");
        }
    }
    Ok(())
}

impl Command {
    pub fn execute(self) -> Result<ExitCode> {
        match self {
            Self::Run(args) => {
                let command_line = CommandLine {
                    args,
                    log_level: None,
                    log_format: None,
                    netns: None,
                };
                run(command_line.resolve()?, command_line).map(|()| ExitCode::SUCCESS)
            }
            Self::CheckConfig(args) => check_config(&args.file),
            Self::Beat(args) => beat(args).map(|()| ExitCode::SUCCESS),
            Self::Status(args) => status(args),
            Self::Detach(args) => detach(args).map(|()| ExitCode::SUCCESS),
            Self::Forget(args) => forget(args).map(|()| ExitCode::SUCCESS),
            Self::Completions { shell } => completions(shell).map(|()| ExitCode::SUCCESS),
            Self::Man => man().map(|()| ExitCode::SUCCESS),
        }
    }
}
