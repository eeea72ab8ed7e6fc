//! `cargo xtask`: the project's build, run, test and bench entry points. Each
//! one installs what it needs first (see `toolchain`).

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
    /// Install rust-src and a bpf-linker matching the toolchain's LLVM.
    Setup,
    /// Build everything in release mode into target/release/hb.
    Build,
    /// Build, then run the collector: `cargo xtask run -- --iface eth0 [hb run options]`.
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
    /// Run the criterion benchmarks (XDP per-packet cost, sweep).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => {
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
            ensure_iproute2()?;
            let tc = toolchain::ensure()?;
            let mut cmd = cargo(&root, &tc);
            cmd.args(["test", "--workspace", "--exclude", "hb-ebpf"])
                .args(&args);
            toolchain::run(&mut cmd)?;
        }
        Cmd::Bench { args } => {
            require_root("the benchmarks load XDP programs")?;
            require_bpf()?;
            let tc = toolchain::ensure()?;
            let mut cmd = cargo(&root, &tc);
            cmd.args(["bench", "-p", "hb-benches"]).args(&args);
            toolchain::run(&mut cmd)?;
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
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

/// The integration tests drive network namespaces with `ip` from iproute2.
fn ensure_iproute2() -> Result<()> {
    if Command::new("ip").arg("-V").output().is_ok() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_ok() {
        eprintln!("xtask: installing iproute2 (the tests need `ip netns`)");
        toolchain::run(Command::new("apt-get").arg("update").arg("-q"))?;
        return toolchain::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "iproute2"]),
        );
    }
    bail!("`ip` (iproute2) is not installed: install iproute2 and run the tests again")
}
