//! `hb check-config FILE`: reads the file as `hb run --config FILE` would,
//! loads the inventory it names, and says what is wrong (with the line) or
//! sums up what it would run with.

use std::{path::Path, process::ExitCode};

use anyhow::{Result, anyhow};

use crate::{
    cli::{Cli, Command},
    config::FileSettings,
    track::fleet::Fleet,
};

pub fn check_config(path: &Path) -> Result<ExitCode> {
    let file = FileSettings::read(path)?;
    let Command::Run(mut args) = Cli::try_parse_noting(["hb", "run"])?.command else {
        unreachable!("hb run parses as run")
    };
    file.apply(&mut args);
    file.validate(path, &args)?;
    Fleet::load(&args.fleet_config()).map_err(|e| anyhow!("inventory: {e}"))?;
    let iface = match (&args.iface, args.ingest) {
        (Some(i), _) => format!("interface {i}"),
        (None, crate::cli::IngestKind::Socket) => "socket ingest".into(),
        (None, _) => "the default route's interface".into(),
    };
    let inventory = match &args.inventory {
        Some(p) => format!("inventory {}", p.display()),
        None => "no inventory".into(),
    };
    let groups = match args.groups.len() {
        0 => "no groups".to_owned(),
        1 => "1 group".to_owned(),
        n => format!("{n} groups"),
    };
    println!(
        "{}: ok: {iface}, timeout {}, sweep {}, {inventory}, {groups}",
        path.display(),
        args.timeout,
        humantime::format_duration(args.sweep),
    );
    Ok(ExitCode::SUCCESS)
}
