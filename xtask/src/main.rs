//! `cargo xtask`: the project's build, run, test and bench entry points. Each
//! one installs what it needs first (see `toolchain`).

mod packages;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark hb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install rust-src and a bpf-linker matching the toolchain's LLVM, and
    /// the Debian packages the tests run (iproute2, prometheus,
    /// prometheus-alertmanager) when missing.
    Setup,
    /// Build everything in release mode into target/release/hb.
    Build,
    /// Build, then run the collector: `cargo xtask run [-- hb run options]` (without --iface: the default route's interface).
    Run {
        /// Options passed to `hb run` (see `hb run --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, BPF_PROG_TEST_RUN tests and the namespace integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the criterion benchmarks (XDP per-packet cost, sweep), then the end-to-end load test.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Only the end-to-end load test (no criterion benchmarks).
    #[arg(long, conflicts_with = "no_load")]
    load: bool,
    /// Only the criterion benchmarks (no load test).
    #[arg(long)]
    no_load: bool,
    /// Load test: distinct hosts simulated (default 1000000).
    #[arg(long)]
    hosts: Option<String>,
    /// Load test: each host beats once per period (default 5s).
    #[arg(long)]
    period: Option<String>,
    /// Load test: the collector's --timeout (default 8s).
    #[arg(long)]
    timeout: Option<String>,
    /// Load test: the collector's --sweep (default 1s).
    #[arg(long)]
    sweep: Option<String>,
    /// Load test: traffic time of steady, flood and junk-flood (default 15s).
    #[arg(long)]
    duration: Option<String>,
    /// Load test: cap on the flood rate, frames/s (default: as fast as possible).
    #[arg(long)]
    rate: Option<String>,
    /// Load test: comma-separated scenarios (steady, flood, silent-1%, recovery, churn, junk-flood; default all).
    #[arg(long)]
    scenarios: Option<String>,
    /// Load test: comma-separated ingest modes to compare (default xdp,socket).
    #[arg(long)]
    ingest: Option<String>,
    /// Arguments for `cargo bench` (criterion), e.g. a benchmark filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl BenchArgs {
    /// The load test options given, as `hb-load` arguments.
    fn load_args(&self) -> Vec<String> {
        let opts = [
            ("--hosts", &self.hosts),
            ("--period", &self.period),
            ("--timeout", &self.timeout),
            ("--sweep", &self.sweep),
            ("--duration", &self.duration),
            ("--rate", &self.rate),
            ("--scenarios", &self.scenarios),
            ("--ingest", &self.ingest),
        ];
        opts.into_iter()
            .filter_map(|(name, v)| v.as_ref().map(|v| [name.to_string(), v.clone()]))
            .flatten()
            .collect()
    }
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Setup => {
            // Without root the packages cannot be installed, but the
            // toolchain (all that build and run need) still can.
            if let Err(err) =
                packages::ensure(&[packages::IPROUTE2, packages::PROMETHEUS, packages::BROWSER])
            {
                if packages::is_root() {
                    return Err(err);
                }
                eprintln!("xtask: warning: the tests will need: {err:#}");
            }
            let tc = toolchain::ensure()?;
            eprintln!(
                "xtask: eBPF toolchain {}, bpf-linker in {}",
                tc.name,
                tc.linker_dir.display()
            );
        }
        Cmd::Build => build(&root)?,
        Cmd::Run { args } => {
            require_root("hb run attaches an XDP program")?;
            require_bpf()?;
            build(&root)?;
            let hb = root.join("target/release/hb");
            let mut cmd = Command::new(&hb);
            cmd.arg("run").args(&args);
            exec(cmd)?;
        }
        Cmd::Test { args } => {
            require_root("the tests load XDP programs and create network namespaces")?;
            require_bpf()?;
            let weakened = weakening_knobs();
            if !weakened.is_empty() && std::env::var_os("CI").is_some() {
                bail!(
                    "refusing to run a weakened suite under CI: unset {}",
                    weakened.join(", ")
                );
            }
            report_weakened(&weakened);
            // One apt-get run for everything missing.
            packages::ensure(&[packages::IPROUTE2, packages::PROMETHEUS, packages::BROWSER])?;
            let tc = toolchain::ensure()?;
            let mut cmd = cargo(&root, &tc);
            cmd.args(["test", "--workspace", "--exclude", "hb-ebpf"])
                .args(&args);
            toolchain::run(&mut cmd)?;
            if args.is_empty() {
                // The benchmarks stay buildable and their assertions hold:
                // each runs once, in criterion's test mode.
                let mut cmd = cargo(&root, &tc);
                cmd.args(["bench", "-p", "hb-benches", "--", "--test"]);
                toolchain::run(&mut cmd)?;
            }
            report_weakened(&weakened);
        }
        Cmd::Bench(bench) => {
            require_root("the benchmarks load XDP programs")?;
            require_bpf()?;
            let tc = toolchain::ensure()?;
            if !bench.load {
                let mut cmd = cargo(&root, &tc);
                cmd.args(["bench", "-p", "hb-benches"]).args(&bench.args);
                toolchain::run(&mut cmd)?;
            }
            if !bench.no_load {
                packages::ensure(&[packages::IPROUTE2])?;
                build(&root)?;
                let mut cmd = cargo(&root, &tc);
                cmd.args(["build", "--release", "-p", "hb-benches", "--bin", "hb-load"]);
                toolchain::run(&mut cmd)?;
                let release = root.join("target/release");
                let mut cmd = Command::new(release.join("hb-load"));
                cmd.arg("--hb")
                    .arg(release.join("hb"))
                    .args(bench.load_args());
                // Replaced, so that Ctrl-C reaches hb-load alone and it
                // cleans up its namespaces before the shell returns.
                exec(cmd)?;
            }
        }
    }
    Ok(())
}

/// The checkout `cargo xtask` was run from. `cargo run` sets the manifest
/// directory at run time too; the path compiled in is only a last resort,
/// because a copied or moved checkout would build and test the original.
fn workspace_root() -> Result<PathBuf> {
    let xtask_dir = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            cwd.ancestors()
                .map(|d| d.join("xtask"))
                .find(|d| d.join("Cargo.toml").is_file())
                .context("not inside an hb checkout: run `cargo xtask` from the repository")?
        }
    };
    let root = xtask_dir
        .parent()
        .context("xtask lives in the workspace root")?;
    Ok(root.to_path_buf())
}

/// Environment variables that make the suite test less than it promises.
fn weakening_knobs() -> Vec<String> {
    let mut found = Vec::new();
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        found.push("AYA_BUILD_SKIP (the XDP program is not rebuilt)".to_owned());
    }
    if let Some(frames) = std::env::var_os("HB_FUZZ_FRAMES") {
        let full = frames
            .to_str()
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|n| n >= 1_000_000);
        if !full {
            found.push(format!(
                "HB_FUZZ_FRAMES={} (the fuzz test runs 1000000 frames)",
                frames.to_string_lossy()
            ));
        }
    }
    found
}

fn report_weakened(weakened: &[String]) {
    for knob in weakened {
        eprintln!("xtask: WARNING: this run is weaker than the suite: {knob}");
    }
}

fn cargo(root: &Path, tc: &toolchain::Toolchain) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    tc.apply(&mut cmd);
    cmd
}

fn build(root: &Path) -> Result<()> {
    let tc = toolchain::ensure()?;
    let mut cmd = cargo(root, &tc);
    cmd.args(["build", "--release", "-p", "hb-userspace"]);
    toolchain::run(&mut cmd)
}

/// Runs `cmd` in the foreground and exits with its status; SIGINT/SIGTERM
/// reach it directly because it shares our process group.
fn exec(mut cmd: Command) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start {cmd:?}"))
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}, which needs root: run this command as root (e.g. with sudo)");
    }
    Ok(())
}

fn require_bpf() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): \
             hb needs a kernel built with CONFIG_DEBUG_INFO_BTF and BPF/XDP support"
        );
    }
    Ok(())
}
