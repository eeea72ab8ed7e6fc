use clap::Parser as _;
use hb_userspace::Cli;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    if let Err(err) = Cli::parse().command.execute() {
        eprintln!("hb: error: {err:#}");
        std::process::exit(1);
    }
}
