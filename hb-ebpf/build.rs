use which::which;

/// Rebuild when bpf-linker changes: the object is its output.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
