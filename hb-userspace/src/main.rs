use std::process::ExitCode;

use hb_userspace::{Cli, init_logging};

fn main() -> ExitCode {
    // clap's own errors: `error: …` and a usage hint, status 2.
    let cli = Cli::parse_noting();
    // `hb run --config` settles the level and format again once it has read
    // the file.
    init_logging(cli.log_level, cli.log_format.unwrap_or_default());
    match cli.execute() {
        Ok(code) => code,
        Err(err) => {
            // The same prefix as clap's.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
