use std::process::ExitCode;

use clap::Parser as _;
use hb_userspace::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // clap's own errors: `error: …` and a usage hint, status 2.
    let cli = Cli::parse();
    match cli.execute() {
        Ok(code) => code,
        Err(err) => {
            // The same prefix as clap's.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
