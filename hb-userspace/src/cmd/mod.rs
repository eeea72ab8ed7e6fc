//! The subcommands, one file each.

mod beat;
mod detach;
mod key;
mod run;
mod status;

pub use beat::{Signer, beat, default_host_id};
pub use detach::detach;
pub use key::parse as parse_key;
pub use run::run;
pub use status::status;

use anyhow::Result;

use crate::cli::Command;

impl Command {
    pub fn execute(self) -> Result<()> {
        match self {
            Self::Run(args) => run(args),
            Self::Beat(args) => beat(args),
            Self::Status(args) => status(args),
            Self::Detach(args) => detach(args),
        }
    }
}
