//! Builds hb-ebpf for the BPF target with aya-build and leaves the object in
//! OUT_DIR, where `src/ingest/xdp/program.rs` embeds it.

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HB_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && which_bpf_linker().is_none() {
        bail!(
            "bpf-linker is not on PATH: build with `cargo xtask build` (or `cargo xtask test`), \
             which installs a bpf-linker matching the toolchain and puts it on PATH"
        );
    }
    let toolchain = std::env::var("HB_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(name) => Toolchain::Custom(name),
        None => Toolchain::Nightly,
    };
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = format!("{manifest}/../hb-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "hb-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
