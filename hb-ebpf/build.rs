use which::which;

fn main() {
    // Rebuild when bpf-linker changes: the object is its output.
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
