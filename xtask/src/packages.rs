//! Programs the tests run that come from Debian packages: found on `PATH`,
//! or installed with apt-get (non-interactively: CI runs with no stdin)
//! when any is missing, as `toolchain` installs rust-src and bpf-linker.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

/// A program the tests run, and the Debian package that ships it.
pub struct Need {
    /// Accepted names of the program: any one on `PATH` will do (Debian
    /// calls Alertmanager `prometheus-alertmanager`, upstream `alertmanager`).
    pub programs: &'static [&'static str],
    pub package: &'static str,
    /// What needs it, for the message printed before installing.
    pub why: &'static str,
}

/// The integration tests drive network namespaces with `ip`.
pub const IPROUTE2: &[Need] = &[Need {
    programs: &["ip"],
    package: "iproute2",
    why: "the tests create network namespaces with `ip netns`",
}];

/// Prometheus and Alertmanager, run for real by the tests
/// (hb-userspace/tests/prometheus.rs): `promtool` checks and unit-tests the
/// shipped rules, `prometheus` scrapes a collector, `alertmanager` and
/// `amtool` receive and inspect its alerts.
pub const PROMETHEUS: &[Need] = &[
    Need {
        programs: &["promtool"],
        package: "prometheus",
        why: "the tests check contrib/prometheus/hb-rules.yml with promtool",
    },
    Need {
        programs: &["prometheus"],
        package: "prometheus",
        why: "the tests scrape a collector with a real Prometheus",
    },
    Need {
        programs: &["alertmanager", "prometheus-alertmanager"],
        package: "prometheus-alertmanager",
        why: "the tests deliver alerts to a real Alertmanager",
    },
    Need {
        programs: &["amtool"],
        package: "prometheus-alertmanager",
        why: "the tests query Alertmanager with amtool",
    },
];

/// A headless browser, run for real by the tests of the status page
/// (hb-userspace/tests/page.rs): it loads `GET /` and dumps the DOM.
pub const BROWSER: &[Need] = &[Need {
    programs: &["chromium"],
    package: "chromium",
    why: "the tests load the status page in a headless chromium",
}];

/// Installs the packages of every missing program in `groups`, with one
/// `apt-get update` and one `apt-get install`; cheap when nothing is
/// missing.
pub fn ensure(groups: &[&[Need]]) -> Result<()> {
    let mut missing: Vec<&Need> = Vec::new();
    for need in groups.iter().copied().flatten() {
        if need.programs.iter().all(|p| toolchain::which(p).is_none()) {
            missing.push(need);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.sort_unstable();
    packages.dedup();
    if toolchain::which("apt-get").is_none() {
        let programs: Vec<&str> = missing.iter().map(|n| n.programs[0]).collect();
        bail!(
            "{} not installed and this system has no apt-get: install {} (or their \
             equivalents) and run this command again",
            programs.join(", "),
            packages.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "{} missing: run this command as root, so that apt-get can install {}, \
             or install them yourself",
            missing
                .iter()
                .map(|n| n.programs[0])
                .collect::<Vec<_>>()
                .join(", "),
            packages.join(" ")
        );
    }
    for need in &missing {
        eprintln!(
            "xtask: `{}` is missing ({}): installing {}",
            need.programs[0], need.why, need.package
        );
    }
    apt_get(&["update", "-q"]).context("apt-get update failed (output above)")?;
    let mut install = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        // Never a question about a changed configuration file: there is
        // nobody to answer it.
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    install.extend(&packages);
    apt_get(&install)
        .with_context(|| format!("installing {} failed (output above)", packages.join(" ")))?;
    for need in &missing {
        if need.programs.iter().all(|p| toolchain::which(p).is_none()) {
            bail!(
                "{} is installed but none of {:?} is on PATH",
                need.package,
                need.programs
            );
        }
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_get(args: &[&str]) -> Result<()> {
    toolchain::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .stdin(Stdio::null()),
    )
}
