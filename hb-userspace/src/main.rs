use clap::Parser as _;
use hb_userspace::cli::{Cli, Command};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => hb_userspace::run::run(args),
        Command::Beat(args) => hb_userspace::beat::beat(args),
        Command::Status(args) => hb_userspace::status::status(args),
        Command::Detach(args) => hb_userspace::detach::detach(args),
    };
    if let Err(err) = result {
        eprintln!("hb: error: {err:#}");
        std::process::exit(1);
    }
}
