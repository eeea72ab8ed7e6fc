//! Installs what building hb-ebpf needs: `rust-src` for the toolchain that
//! compiles it and a bpf-linker linked against that toolchain's own libLLVM.
//!
//! bpf-linker links LLVM bitcode, so its LLVM must have the same major version
//! as the rustc that emits the bitcode. Every rustup toolchain ships its own
//! `libLLVM.so.*`; building bpf-linker against exactly that library needs no
//! system LLVM. The result is cached per user (its RPATH is absolute) and keyed
//! by the library's file name, so it is rebuilt only when the LLVM changes.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// crates.io version of bpf-linker known to build against LLVM 22 (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the build of hb-ebpf needs in its environment.
pub struct Toolchain {
    /// rustup toolchain name that compiles hb-ebpf (`nightly`, or `stable`
    /// with `RUSTC_BOOTSTRAP=1` when no nightly is installed).
    pub name: String,
    /// Directory holding `bpf-linker`, put first on `PATH`.
    pub linker_dir: PathBuf,
    bootstrap: bool,
}

impl Toolchain {
    /// Applies the environment that `aya-build` (in hb-userspace's build.rs)
    /// needs to `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        let mut path = OsString::from(&self.linker_dir);
        if let Some(old) = env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
        cmd.env("HB_EBPF_TOOLCHAIN", &self.name);
        if self.bootstrap {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
    }
}

/// Makes sure everything is installed; cheap when it already is.
pub fn ensure() -> Result<Toolchain> {
    if which("rustup").is_none() {
        bail!(
            "rustup is not on PATH: hb builds its eBPF program with a rustup toolchain; \
             install rustup and a Rust toolchain, then run this command again"
        );
    }
    let (name, bootstrap) = pick_toolchain()?;
    ensure_rust_src(&name)?;
    let linker_dir = ensure_bpf_linker(&name)?;
    Ok(Toolchain {
        name,
        linker_dir,
        bootstrap,
    })
}

pub fn which(program: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Prefers nightly (what aya expects); falls back to stable with
/// `RUSTC_BOOTSTRAP=1`, which unlocks `-Z build-std` on a stable compiler.
fn pick_toolchain() -> Result<(String, bool)> {
    if let Ok(name) = env::var("HB_EBPF_TOOLCHAIN") {
        let bootstrap = !name.starts_with("nightly");
        return Ok((name, bootstrap));
    }
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has = |prefix: &str| installed.lines().any(|l| l.starts_with(prefix));
    if has("nightly") {
        Ok(("nightly".into(), false))
    } else if has("stable") {
        eprintln!(
            "xtask: no nightly toolchain installed; building eBPF with stable and RUSTC_BOOTSTRAP=1"
        );
        Ok(("stable".into(), true))
    } else {
        bail!(
            "neither a nightly nor a stable rustup toolchain is installed: \
             run `rustup toolchain install nightly` and try again"
        )
    }
}

fn ensure_rust_src(toolchain: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {toolchain} (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))
        .context("could not install rust-src; check that the Rust dist server is reachable")
}

/// Per-user cache directory, outside any clone.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("HB_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("hb"));
    }
    let home =
        env::var_os("HOME").context("HOME is not set; set HB_CACHE_DIR to a cache directory")?;
    Ok(PathBuf::from(home).join(".cache").join("hb"))
}

fn ensure_bpf_linker(toolchain: &str) -> Result<PathBuf> {
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let version = output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV did not report an LLVM version")?
        .to_owned();
    let lib_dir = sysroot.join("lib");
    let lib = find_libllvm(&lib_dir)?;

    let prefix = cache_dir()?.join("bpf-linker").join(&lib);
    let bin_dir = prefix.join("bin");
    if bin_dir.join("bpf-linker").is_file() {
        return Ok(bin_dir);
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {lib} (LLVM {major}) into {}; \
         this takes about a minute, once",
        prefix.display()
    );
    // The RPATH baked into bpf-linker is `LLVM_PREFIX/lib`, so the links live
    // at their final place. The binary is installed into a scratch root and
    // moved last: an interrupted build never leaves a linker that looks usable.
    let llvm = prefix.join("llvm");
    let llvm_lib = llvm.join("lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("creating {}", llvm_lib.display()))?;
    // The soname link is what the RPATH finds at run time; libLLVM.so is what
    // `-lLLVM` finds at link time (the toolchain's libLLVM-NN-*.so is a linker
    // script, not the library).
    symlink(&lib_dir.join(&lib), &llvm_lib.join(&lib))?;
    symlink(&lib_dir.join(&lib), &llvm_lib.join("libLLVM.so"))?;
    let scratch = prefix.join(format!("partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &llvm)
        .env_remove("RUSTC_BOOTSTRAP")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .arg(&scratch))
    .context("building bpf-linker failed (output above)")?;
    fs::create_dir_all(&bin_dir)?;
    fs::rename(
        scratch.join("bin").join("bpf-linker"),
        bin_dir.join("bpf-linker"),
    )
    .context("installing bpf-linker into the cache")?;
    let _ = fs::remove_dir_all(&scratch);
    run(Command::new(bin_dir.join("bpf-linker")).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    Ok(bin_dir)
}

fn find_libllvm(lib_dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: this toolchain does not ship its LLVM as a shared library",
            lib_dir.display()
        )
    })
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("command printed non-UTF-8 output")
}
