//! The subcommands, one file each.

mod beat;
mod completions;
mod detach;
mod forget;
mod key;
mod man;
mod netns;
mod run;
mod status;

pub use beat::{Signer, beat, default_host_id};
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
    cli::{Cli, Command, IngestKind},
    ingest::xdp::join_host_mounts,
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
    pub fn execute(self) -> Result<ExitCode> {
        if let Some(name) = &self.netns {
            netns::enter(name)?;
        }
        let pins_here = match &self.command {
            Command::Run(a) => a.bpffs.is_none() && a.ingest != IngestKind::Socket,
            Command::Status(a) => a.bpffs.is_none(),
            Command::Detach(a) => a.bpffs.is_none(),
            Command::Forget(a) => a.bpffs.is_none(),
            Command::Beat(_) | Command::Completions { .. } | Command::Man => false,
        };
        if pins_here && let Some(pid) = join_host_mounts()? {
            let why = format!(
                "no bpffs in this mount namespace (e.g. under `ip netns exec`): using the host's, in the mount namespace of pid {pid}"
            );
            if matches!(self.command, Command::Run(_)) {
                log::info!("{why}");
            } else {
                log::debug!("{why}");
            }
        }
        self.command.execute()
    }
}

impl Command {
    pub fn execute(self) -> Result<ExitCode> {
        match self {
            Self::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
            Self::Beat(args) => beat(args).map(|()| ExitCode::SUCCESS),
            Self::Status(args) => status(args),
            Self::Detach(args) => detach(args).map(|()| ExitCode::SUCCESS),
            Self::Forget(args) => forget(args).map(|()| ExitCode::SUCCESS),
            Self::Completions { shell } => completions(shell).map(|()| ExitCode::SUCCESS),
            Self::Man => man().map(|()| ExitCode::SUCCESS),
        }
    }
}
